"""Call options of the chat model: which exist, where they come from, how they become a policy.

Options come from instance fields, ``config["configurable"]`` and call keywords (precedence:
call keyword > configurable > instance field > policy). They are turned into one override of
the policy and validated by the policy loader (:func:`guardrail.policy.with_overrides`), so the
schema is the one place that says what a value may be; errors name the option as given.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from pydantic import ValidationError

from guardrail.errors import ConfigError
from guardrail.policy import Policy, PolicySource, load_policy, with_overrides
from guardrail.policy.callers import Registry, check_options, resolve_switch, switched
from guardrail.policy.loader import load_policy_file, resolve_policy_ref, shipped_policies
from guardrail.policy.schema import CallerRights

#: Per-call sampling options (``invoke(..., temperature=0.7)``, ``configurable={...}``).
SAMPLING_OPTIONS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed")
#: Per-call options of the contrastive strategies.
STRATEGY_OPTIONS = ("alpha", "lam", "beta", "steps", "safety_prompt")
#: Every option a call may override, plus ``policy`` itself.
CALL_OPTIONS = ("policy", "system_prompt", *SAMPLING_OPTIONS, *STRATEGY_OPTIONS)
#: Model-loading options (instance fields only: changing them means another loaded model).
LOAD_OPTIONS = ("n_ctx", "n_threads", "n_gpu_layers", "n_streams", "kv", "device", "dtype")
#: Call keywords that are not policy options (handled by the chat model itself).
CALL_ONLY = ("tools", "tool_choice", "stop", "ls_structured_output_format", "max_tokens",
             "response_format", "parallel_tool_calls")


#: Policy files kept loaded (least recently used dropped first).
POLICY_FILE_CACHE_SIZE = 64
_Stamp = tuple[tuple[int, int] | None, ...]
_file_policies: OrderedDict[Path, tuple[_Stamp, list[Path], Policy]] = OrderedDict()
_file_lock = threading.Lock()


@lru_cache(maxsize=64)
def _load_named_policy(name: str) -> Policy:
    """A shipped policy, loaded once per name (package data does not change)."""
    return load_policy(name)


def _stamps(files: list[Path]) -> _Stamp:
    """Modification time and size of each file (None: unreadable, which counts as a change)."""
    out: list[tuple[int, int] | None] = []
    for f in files:
        try:
            st = f.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def _load_policy_path(path: Path) -> Policy:
    """A policy file, loaded again once it or a file it extends changed (modification time or
    size). Keyed by the resolved path: ``stale.yaml`` and ``./stale.yaml`` are one entry."""
    key = path.resolve()
    with _file_lock:
        hit = _file_policies.get(key)
    if hit is not None and _stamps(hit[1]) == hit[0]:
        with _file_lock:
            if key in _file_policies:
                _file_policies.move_to_end(key)
        return hit[2]
    before = _stamps([key])
    loaded = load_policy_file(path)
    files = [f.resolve() for f in loaded.files]
    stamps = _stamps(files)
    if stamps[:1] == before:  # not edited while being read (else the next call reads it again)
        with _file_lock:
            _file_policies[key] = (stamps, files, loaded.policy)
            _file_policies.move_to_end(key)
            while len(_file_policies) > POLICY_FILE_CACHE_SIZE:
                _file_policies.popitem(last=False)
    return loaded.policy


def as_policy(value: str | Path | Policy | PolicySource) -> Policy:
    """A shipped policy by name (loaded once), a YAML file (loaded again when it or a file it
    extends has changed since it was last loaded), the ``Policy`` itself, or a
    :class:`~guardrail.policy.PolicySource`'s current policy (it follows its file and keeps the
    last good policy when an edit does not load)."""
    if isinstance(value, Policy):
        return value
    if isinstance(value, PolicySource):
        return value.get()
    if not isinstance(value, (str, Path)):
        raise ConfigError(
            f"policy: expected a shipped policy name, a YAML path, a Policy or a PolicySource, "
            f"got {type(value).__name__}"
        )
    text = str(value)
    path = resolve_policy_ref(text)
    if shipped_policies().get(text) == path:
        return _load_named_policy(text)
    return _load_policy_path(path)


def from_config(config: RunnableConfig | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Call options from ``config["configurable"]`` (keyword arguments take precedence)."""
    conf = (config or {}).get("configurable") or {}
    picked = {k: conf[k] for k in CALL_OPTIONS if k in conf and k not in kwargs}
    return {**picked, **kwargs}


def stop_list(stop: Any) -> list[str]:
    """``stop`` as a list of strings: one string is one stop sequence (never its characters)."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise ConfigError(f"stop: expected a string or a list of strings, got {stop!r:.80}")


def validation_summary(e: ValidationError) -> str:
    """A pydantic error as ``field: message`` parts (no input echoed beyond pydantic's own)."""
    return "; ".join(
        f"{'.'.join(str(x) for x in err['loc']) or 'value'}: {err['msg']}" for err in e.errors()
    )


def split_call_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Validate per-call keyword arguments; return the policy options among them."""
    call: dict[str, Any] = {}
    for k, v in kwargs.items():
        if k in CALL_OPTIONS:
            call[k] = v
        elif k == "max_tokens":
            call["max_new_tokens"] = v
        elif k == "parallel_tool_calls" and v is not None and not isinstance(v, bool):
            raise ConfigError(f"parallel_tool_calls: expected true, false or None, got {v!r}")
        elif k in CALL_ONLY:
            continue
        elif k == "model":
            raise ConfigError(
                "model: switching the model per call is not supported; construct another "
                "GuardedChatModel (loaded models are cached and shared)"
            )
        else:
            raise ConfigError(
                f"unknown call option {k!r}; allowed: {', '.join(CALL_OPTIONS)}, "
                "max_tokens, stop, tools, tool_choice, parallel_tool_calls, response_format"
            )
    return call


def _override(
    model: Mapping[str, Any], sampling: Mapping[str, Any], strategy: Mapping[str, Any],
    system_prompt: str | None,
) -> dict[str, Any]:
    """The nested policy override the flat options stand for."""
    out: dict[str, Any] = {}
    for section, values in (("model", model), ("sampling", sampling), ("strategy", strategy)):
        if values:
            out[section] = dict(values)
    if system_prompt is not None:
        out["system_prompt"] = system_prompt
    return out


def build_policy(
    base: str | Path | Policy | PolicySource, instance: Mapping[str, Any],
    call: Mapping[str, Any], *,
    rights: CallerRights | None = None, registry: Registry | None = None,
    names: Mapping[str, str] | None = None,
) -> Policy:
    """The policy a call runs under: ``base`` with the instance's options, then the call's.

    ``instance`` holds the instance fields that are set (``model``/``backend`` and the load,
    sampling and strategy options, ``system_prompt``): the operator's. ``call`` holds the call's
    options: the caller's, checked against ``rights`` (default: the base policy's ``callers``);
    a ``policy`` among them switches, by name, to one the rights allow (``registry`` first, then
    the shipped policies). Strategy options on a strategy without them are errors when given per
    call, or at construction for the instance's own policy; an instance's strategy options are
    dropped when a call switches to a policy whose strategy lacks them. ``names`` maps option
    names to the spelling the caller used (``max_new_tokens`` given as ``max_tokens``).
    """
    policy = as_policy(base)
    instance_strict = True
    if call:
        granted = rights or policy.callers
        check_options(call, granted, policy)
        if call.get("policy") is not None:
            target = as_policy(resolve_switch(call["policy"], granted, registry, policy))
            policy = switched(policy, target)
            instance_strict = False
    model = {k: instance[k] for k in LOAD_OPTIONS if instance.get(k) is not None}
    if instance.get("model") is not None:
        model["path"] = instance["model"]
    if instance.get("backend") is not None:
        model["backend"] = instance["backend"]
    sampling = {k: instance[k] for k in SAMPLING_OPTIONS if instance.get(k) is not None}
    sampling.update({k: call[k] for k in SAMPLING_OPTIONS if call.get(k) is not None})
    fields = type(policy.strategy).model_fields
    strategy: dict[str, Any] = {}
    for source, opts, strict in (
        ("argument", instance, instance_strict),
        ("call option", call, True),
    ):
        given = {k: opts[k] for k in STRATEGY_OPTIONS if opts.get(k) is not None}
        bad = [k for k in given if k not in fields]
        if bad and strict:
            raise ConfigError(
                f"{source} {bad[0]!r} applies to the adacd strategy only; policy "
                f"{policy.name!r} uses strategy {policy.strategy.kind!r}"
            )
        strategy.update({k: v for k, v in given.items() if k in fields})
    system = call.get("system_prompt", instance.get("system_prompt"))
    over = _override(model, sampling, strategy, system)
    if not over:
        return policy
    try:
        return with_overrides(policy, over, source="options")
    except ConfigError as e:
        given = [*model, *sampling, *strategy, *(["system_prompt"] if system is not None else [])]
        spelled = ", ".join((names or {}).get(k, k) for k in given)
        raise ConfigError(f"invalid option for policy {policy.name!r} ({spelled}): {e}") from e


__all__ = [
    "CALL_ONLY", "CALL_OPTIONS", "LOAD_OPTIONS", "SAMPLING_OPTIONS", "STRATEGY_OPTIONS",
    "as_policy", "build_policy", "from_config", "split_call_kwargs", "stop_list",
    "validation_summary",
]
