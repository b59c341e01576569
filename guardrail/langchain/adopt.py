"""Adopting another LangChain chat model of a local model: the ``GuardedChatModel`` that decodes
for it, with its settings and its loaded weights.

Decode-time guarding needs the model's logits, so only local models can be adopted:

* ``ChatLlamaCpp`` (langchain-community): its GGUF, its sampling settings (``temperature``,
  ``max_tokens``, ``top_p``, ``top_k``: the values it decodes with, set or default), its
  explicitly set ``n_ctx``, ``n_threads``, ``n_gpu_layers``, ``seed``, ``stop``, and its
  loaded ``Llama``, whose weights the llama.cpp backend borrows
  (a context of its own is made on them; the file is not read a second time).
* ``ChatHuggingFace`` over a ``HuggingFacePipeline`` (langchain-huggingface): the pipeline's
  model and tokenizer (borrowed, on the pipeline's device and dtype), its generation settings
  (``pipeline_kwargs``: ``max_new_tokens``, ``temperature``, ``do_sample``, ``top_p``,
  ``top_k``) and the chat model's explicitly set ``temperature``, ``max_tokens``, ``top_p``,
  ``seed``, ``stop``, which win.

Settings given to the transformers ``pipeline(...)`` call itself, the model's
``generation_config`` and ChatLlamaCpp's default ``repeat_penalty`` are not read. A setting
guardrail has no equivalent for (``repeat_penalty``, ``grammar``, ``lora_path``,
``repetition_penalty``, ``logit_bias``, ...) is refused with a ``ConfigError`` naming it rather
than silently dropped. Any other model (a hosted API model) is refused with one saying why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from guardrail.errors import ConfigError
from guardrail.langchain.chat_model import GuardedChatModel

# ChatLlamaCpp fields and the GuardedChatModel fields they become
_LLAMACPP_FIELDS = {"n_ctx": "n_ctx", "n_threads": "n_threads", "n_gpu_layers": "n_gpu_layers",
                    "temperature": "temperature", "max_tokens": "max_new_tokens",
                    "top_p": "top_p", "top_k": "top_k", "seed": "seed", "stop": "stop"}
# LangChain's own fields, and fields that change nothing guardrail decodes
_LANGCHAIN = {"name", "cache", "verbose", "callbacks", "tags", "metadata", "rate_limiter",
              "disable_streaming", "custom_get_token_ids", "output_version", "profile",
              "streaming"}
# sampling fields carried at their effective values, set or not (the model decoded with them)
_LLAMACPP_SAMPLING = ("temperature", "max_tokens", "top_p", "top_k")
# fields already applied to the loaded weights (repeat_penalty at its default is not applied)
_LLAMACPP_LOADED = {"model_path", "client", "n_parts", "f16_kv", "use_mlock", "use_mmap",
                    "vocab_only", "n_batch", "logits_all"}

# ChatHuggingFace fields and pipeline_kwargs keys, and the GuardedChatModel fields they become
_HF_CHAT_FIELDS = {"temperature": "temperature", "max_tokens": "max_new_tokens",
                   "top_p": "top_p", "seed": "seed", "stop": "stop"}
_HF_CHAT_LOADED = {"llm", "tokenizer", "model_id", "stream_usage"}
_HF_PIPELINE_KWARGS = {"max_new_tokens": "max_new_tokens", "temperature": "temperature",
                       "top_p": "top_p", "top_k": "top_k", "do_sample": None}


def _refuse(kind: str, bad: Iterable[str], allowed: Iterable[str]) -> None:
    bad = sorted(bad)
    if bad:
        raise ConfigError(
            f"GuardrailMiddleware: the agent's {kind} sets {', '.join(bad)}, which guardrail "
            "does not apply; remove them, or use the policy's own settings (allowed: "
            f"{', '.join(allowed)})"
        )


def _chosen(model: Any) -> set[str]:
    chosen = set(getattr(model, "model_fields_set", set()))
    if getattr(model, "model_kwargs", None):
        chosen.add("model_kwargs")
    return chosen


def llamacpp_settings(model: Any) -> dict[str, Any]:
    """A ChatLlamaCpp's explicitly set settings as GuardedChatModel fields; a ``ConfigError``
    names those that have no equivalent here."""
    chosen = _chosen(model)
    _refuse("ChatLlamaCpp", chosen - set(_LLAMACPP_FIELDS) - _LLAMACPP_LOADED - _LANGCHAIN,
            _LLAMACPP_FIELDS)
    keys = chosen.union(_LLAMACPP_SAMPLING) & set(_LLAMACPP_FIELDS)
    out = {_LLAMACPP_FIELDS[k]: getattr(model, k) for k in keys if getattr(model, k) is not None}
    if out.get("seed") is not None and out["seed"] < 0:  # llama.cpp's "random"
        del out["seed"]
    return _stop_list(out)


def _stop_list(out: dict[str, Any]) -> dict[str, Any]:
    """``stop`` as a list (LangChain models also take one string)."""
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]
    return out


def _pipeline(model: Any) -> Any:
    """The transformers pipeline under a ChatHuggingFace, or a ``ConfigError``."""
    llm = getattr(model, "llm", None)
    pipe = getattr(llm, "pipeline", None)
    if type(llm).__name__ != "HuggingFacePipeline" or pipe is None or not hasattr(pipe, "model"):
        raise ConfigError(
            "GuardrailMiddleware: a ChatHuggingFace can be guarded only over a local "
            f"HuggingFacePipeline, not over {type(llm).__name__} (a hosted endpoint gives no "
            "logits)"
        )
    return pipe


def _local_dir(model: Any) -> str:
    """Where the pipeline's model lives on disk: its own path, or the local Hub cache's copy of
    its id (looked up offline; nothing is downloaded)."""
    name = str(getattr(model.config, "_name_or_path", "") or "")
    if name and Path(name).expanduser().exists():
        return str(Path(name).expanduser().resolve())
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(name, "config.json") if name else None
    except Exception:  # noqa: BLE001 - an id the Hub library rejects has no local copy
        hit = None
    if isinstance(hit, str):
        return str(Path(hit).parent)
    raise ConfigError(
        f"GuardrailMiddleware: the ChatHuggingFace's model {name!r} is neither a local "
        "directory nor in the local Hugging Face cache; load it from a local directory"
    )


def huggingface_settings(model: Any) -> dict[str, Any]:
    """A ChatHuggingFace's (over a HuggingFacePipeline) model, device, dtype and generation
    settings as GuardedChatModel fields; a ``ConfigError`` names those with no equivalent."""
    pipe = _pipeline(model)
    llm = model.llm
    kwargs: Mapping[str, Any] = getattr(llm, "pipeline_kwargs", None) or {}
    _refuse("HuggingFacePipeline's pipeline_kwargs", set(kwargs) - set(_HF_PIPELINE_KWARGS),
            _HF_PIPELINE_KWARGS)
    if getattr(llm, "model_kwargs", None) and "model_kwargs" in llm.model_fields_set:
        _refuse("HuggingFacePipeline", ["model_kwargs"], _HF_PIPELINE_KWARGS)
    out: dict[str, Any] = {v: kwargs[k] for k, v in _HF_PIPELINE_KWARGS.items()
                           if v is not None and k in kwargs}
    if kwargs.get("do_sample") is False:
        out["temperature"] = 0.0  # greedy, as the pipeline decodes
    chosen = _chosen(model)
    _refuse("ChatHuggingFace", chosen - set(_HF_CHAT_FIELDS) - _HF_CHAT_LOADED - _LANGCHAIN,
            _HF_CHAT_FIELDS)
    out.update({_HF_CHAT_FIELDS[k]: getattr(model, k) for k in chosen
                if k in _HF_CHAT_FIELDS and getattr(model, k) is not None})
    _stop_list(out)
    weights = pipe.model
    if len(set((getattr(weights, "hf_device_map", None) or {}).values())) > 1:
        raise ConfigError("GuardrailMiddleware: the ChatHuggingFace's model is spread over "
                          "several devices (device_map); guardrail borrows a model on one")
    device = "cuda" if getattr(weights.device, "type", "cpu") == "cuda" else "cpu"
    dtype = str(weights.dtype).removeprefix("torch.")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ConfigError(f"GuardrailMiddleware: the ChatHuggingFace's model is {dtype}; "
                          "guardrail decodes float32, float16 or bfloat16 weights")
    return {"model": _local_dir(weights), "backend": "transformers", "device": device,
            "dtype": dtype, **out}


def guardable_model(model: Any) -> GuardedChatModel:
    """The ``GuardedChatModel`` that decodes for ``model``, or a ``ConfigError`` saying why not."""
    if isinstance(model, GuardedChatModel):
        return model
    kind = type(model).__name__
    if kind == "ChatLlamaCpp" and getattr(model, "model_path", None):
        return GuardedChatModel(model=str(Path(model.model_path)), backend="llamacpp",
                                **llamacpp_settings(model))
    if kind == "ChatHuggingFace":
        return GuardedChatModel(**huggingface_settings(model))
    name = kind if not isinstance(model, str) else repr(model)
    raise ConfigError(
        f"GuardrailMiddleware: the agent's model {name} cannot be guarded; decode-time "
        "guarding needs the model's logits, so the model must be local: use "
        "GuardedChatModel(model=PATH_OR_NONE, backend='llamacpp'|'transformers') (or a "
        "ChatLlamaCpp, or a ChatHuggingFace over a HuggingFacePipeline) as the agent's model"
    )


def loaded_weights(model: Any) -> Any:
    """What an adopted model has loaded already, for :func:`guardrail.loading.get_engine`'s
    ``loaded``: a ChatLlamaCpp's ``Llama``, a ChatHuggingFace pipeline's (model, tokenizer);
    None for anything else."""
    kind = type(model).__name__
    if kind == "ChatLlamaCpp" and type(getattr(model, "client", None)).__name__ == "Llama":
        return model.client
    if kind == "ChatHuggingFace":
        pipe = _pipeline(model)  # the chat model's tokenizer renders its chat template
        return (pipe.model, getattr(model, "tokenizer", None) or pipe.tokenizer)
    return None


__all__ = ["guardable_model", "huggingface_settings", "llamacpp_settings", "loaded_weights"]
