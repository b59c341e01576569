"""``GuardedChatModel.batch``: every input in one batched decode per loaded model.

LangChain's default ``batch`` runs ``invoke`` per input in threads, which the engine's lock
would serialise. Here every input is prepared first (each with its own callback run, config and
options), the prepared calls are grouped by loaded model and decoded together, and each input's
callbacks get its own tokens and result. A failure while preparing fails that input alone, and
so does an input that cannot run (it does not fit the model's context): with
``return_exceptions=True`` its slot holds the error (its run ends with ``on_llm_error``) and the
other inputs are answered; without, the error is raised before anything is decoded, as
``invoke`` would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import CallbackManager, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.outputs import ChatGenerationChunk, LLMResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import ensure_config, get_config_list

from guardrail.langchain.calls import Call, decode_calls, to_generation
from guardrail.langchain.options import from_config

if TYPE_CHECKING:
    from guardrail.langchain.chat_model import GuardedChatModel


def _start(
    model: GuardedChatModel, inp: LanguageModelInput, cfg: RunnableConfig, stop: Any,
    kwargs: dict[str, Any], n: int,
) -> tuple[CallbackManagerForLLMRun, Call]:
    """Open the input's callback run and prepare its call (the run is returned for errors)."""
    kw = from_config(cfg, dict(kwargs))
    kw.pop("ls_structured_output_format", None)
    messages = model._convert_input(inp).to_messages()
    cm = CallbackManager.configure(
        cfg.get("callbacks"), model.callbacks, model.verbose, cfg.get("tags"), model.tags,
        {**(cfg.get("metadata") or {}), **model._get_ls_params(stop=stop, **kw)},
        model.metadata,
    )
    run = cm.on_chat_model_start(
        model._serialized, [messages],
        invocation_params=model._get_invocation_params(stop=stop, **kw),
        options={"stop": stop, **kw}, name=cfg.get("run_name"), run_id=cfg.get("run_id"),
        batch_size=n,
    )[0]
    try:
        return run, model._prepare(messages, stop, kw)
    except Exception as e:
        run.on_llm_error(e)
        raise


def batch(
    model: GuardedChatModel, inputs: list[LanguageModelInput],
    config: RunnableConfig | list[RunnableConfig] | None, *, return_exceptions: bool,
    **kwargs: Any,
) -> list[Any]:
    """Answer ``inputs`` (see the module docstring); results in input order."""
    if not inputs:
        return []
    configs = get_config_list(config, len(inputs))
    stop = kwargs.pop("stop", None)
    results: list[Any] = [None] * len(inputs)
    started: dict[int, tuple[CallbackManagerForLLMRun, Call]] = {}
    for i, (inp, cfg) in enumerate(zip(inputs, configs)):
        try:
            started[i] = _start(model, inp, ensure_config(cfg), stop, kwargs, len(inputs))
        except Exception as e:
            if not return_exceptions:
                raise
            results[i] = e
    groups: dict[int, list[int]] = {}
    for i, (_, c) in started.items():
        groups.setdefault(id(c.engine), []).append(i)
    for idxs in groups.values():
        totals: dict[int, ChatGenerationChunk] = {}
        try:
            calls = [started[i][1] for i in idxs]
            for j, chunk in decode_calls(calls, isolate=return_exceptions):
                i = idxs[j]
                started[i][0].on_llm_new_token(str(chunk.message.content), chunk=chunk)
                totals[i] = chunk if i not in totals else totals[i] + chunk
        except Exception as e:
            for i in idxs:
                started[i][0].on_llm_error(e)
                results[i] = e
            if not return_exceptions:
                raise
            continue
        for i in idxs:
            run, call = started[i]
            if call.error is not None:  # this input alone could not run
                run.on_llm_error(call.error)
                results[i] = call.error
                continue
            gen = to_generation(totals[i], call.parsed)
            if gen.message.id is None:
                gen.message.id = f"lc_run--{run.run_id}"
            run.on_llm_end(LLMResult(generations=[[gen]]))
            results[i] = gen.message
    return results


__all__ = ["batch"]
