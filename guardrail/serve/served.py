"""The served policies: one :class:`~guardrail.GuardedChatModel` per policy the operator named,
built once at startup, looked up by name per request.

A request picks a policy by its name only; the names are the operator's allowlist, so nothing a
request writes is ever read as a file. The operator's ``model``/``backend`` overrides and the
``max_tokens`` cap become fields of each chat model (the operator's side of the trust boundary),
so the policy's ``callers`` rights apply to the request's options exactly as to any call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from guardrail.errors import ConfigError, RefusalError
from guardrail.langchain import GuardedChatModel
from guardrail.langchain.options import build_policy
from guardrail.policy import Policy
from guardrail.serve.config import ServeConfig
from guardrail.serve.protocol import ApiError

log = logging.getLogger("guardrail.serve")

_MODEL_FIELDS = ("model", "backend", "n_ctx", "n_threads", "n_gpu_layers", "n_streams", "kv")


@dataclass
class Served:
    """One served policy: its name (the request's ``model``), the operator's reference to it
    (shipped name or path), its chat model and the policy as resolved at startup."""

    name: str
    spec: str
    model: GuardedChatModel
    policy: Policy
    options: dict[str, Any] = field(default_factory=dict)
    loaded: bool = False  # warmed up at startup, or answered once: its model is in memory

    def describe(self) -> dict[str, Any]:
        """What ``/v1/models`` says about it (nothing of the operator's files)."""
        return {"guardrail": {"strategy": self.policy.strategy.kind,
                              "description": self.policy.description}}


def instance_options(config: ServeConfig) -> dict[str, Any]:
    """The operator's model overrides, as chat-model fields."""
    return {k: getattr(config, k) for k in _MODEL_FIELDS if getattr(config, k) is not None}


def build_served(config: ServeConfig) -> dict[str, Served]:
    """Resolve every configured policy (nothing is loaded yet), in the configured order.

    Raises:
        ConfigError: a policy that does not load or validate, or two with one name.
    """
    out: dict[str, Served] = {}
    for spec in config.policies:
        options = instance_options(config)
        policy = build_policy(spec, options, {})
        if policy.sampling.max_new_tokens > config.max_tokens:
            options["max_new_tokens"] = config.max_tokens
            policy = build_policy(spec, options, {})
        if policy.name in out:
            raise ConfigError(f"policies: two served policies are named {policy.name!r} "
                              f"({out[policy.name].spec!r} and {spec!r}); names must be unique")
        out[policy.name] = Served(policy.name, spec, GuardedChatModel(policy=spec, **options),
                                  policy, options)
    return out


def pick(served: dict[str, Served], name: str, param: str) -> Served:
    """The served policy called ``name``, else 404 listing the served names (the name asked
    for is not repeated: it may be any text, a path included, and is never looked up)."""
    hit = served.get(name)
    if hit is None:
        raise ApiError(404, f"{param}: not a served model; served models: "
                       f"{', '.join(served)}", param=param, code="model_not_found")
    return hit


def warm_up(served: dict[str, Served]) -> None:
    """Load each served policy's model and prompt probe with a one-token answer, so the first
    request does not pay for it (a refusal, which a policy may raise on, is fine)."""
    for s in served.values():
        warm = GuardedChatModel(policy=s.spec, **{**s.options, "max_new_tokens": 1})
        try:
            warm.invoke("Hello")
        except RefusalError:
            pass
        s.loaded = True
        log.info("guardrail serve: policy %r ready", s.name)


__all__ = ["Served", "build_served", "instance_options", "pick", "warm_up"]
