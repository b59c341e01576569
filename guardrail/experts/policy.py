"""Policy glue for ``strategy: experts``: streams, the rule, and the prompt probe binding.

Imports no torch unless a probe router is used, so the portable mode runs on llama.cpp alone.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from guardrail.adapters.base import Backend, Message
from guardrail.decoding.adacd import AdaCDRule
from guardrail.decoding.experts import AgreementRouter, ExpertsRule, FixedWeights
from guardrail.errors import ConfigError
from guardrail.policy.strategies import (
    ExpertsStrategy,
    FileRouter,
    FixedRouter,
    LoraAdapterExpert,
    PromptExpert,
)


def is_faithful(s: ExpertsStrategy) -> bool:
    """Both experts are LoRA adapters (faithful mode); both prompts is portable mode."""
    kinds = {s.safety.kind, s.helpfulness.kind}
    if kinds == {"lora"}:
        return True
    if "lora" in kinds:
        raise ConfigError(
            "strategy.safety / strategy.helpfulness: both experts must be prompt experts "
            f"(portable mode) or both lora adapters (faithful mode), got {s.safety.kind!r} and "
            f"{s.helpfulness.kind!r}"
        )
    return False


_MIXES: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()


def faithful_rule(s: ExpertsStrategy, backend: Backend | None) -> Any:
    """The faithful mode a policy names: the backend's model with both LoRA experts and the
    router hooked into every down-projection (loaded once per model and files)."""
    if backend is None or backend.name != "transformers":
        name = backend.name if backend else None
        raise NotImplementedError(
            f"LoRA experts (faithful mode) need the transformers backend, got {name!r}; "
            "LoRA-per-sequence experts on llama.cpp are not implemented"
        )
    if s.adacd is not None:
        raise NotImplementedError("strategy.adacd on top of LoRA experts is not implemented")
    r = s.router
    if isinstance(r, FixedRouter):
        router: Any = (r.alpha, r.beta)
    elif isinstance(r, FileRouter):
        router = r.path
    else:
        raise ConfigError(
            "strategy.router: the agreement router mixes token streams (prompt experts); LoRA "
            "experts take a fixed router or a per-layer router file"
        )
    from guardrail.experts.faithful import FaithfulRule, load_mix

    assert isinstance(s.safety, LoraAdapterExpert) and isinstance(s.helpfulness, LoraAdapterExpert)
    model = backend.model  # type: ignore[attr-defined]
    key = (s.safety.path, s.helpfulness.path, router, s.scale)
    cache = _MIXES.setdefault(model, {})
    if key not in cache:
        cache[key] = load_mix(model, s.safety.path, s.helpfulness.path, router, scale=s.scale)
    return FaithfulRule(cache[key])


@dataclass(frozen=True)
class UnboundProbe:
    """A probe router before it has seen the prompt (the engine binds it per request)."""

    path: str
    name: str = "probe"

    def weights(
        self, z_safety: NDArray[np.float32], z_help: NDArray[np.float32], step: int
    ) -> tuple[float, float]:
        raise ConfigError(
            f"probe router {self.path!r} was not bound to a prompt: build requests with "
            "Engine.request (or call bind_prompt_router) so the probe can read the prompt"
        )


def experts_rule(s: ExpertsStrategy, backend: Backend | None = None) -> Any:
    """The rule a policy's experts strategy names: faithful (LoRA experts) or portable."""
    if is_faithful(s):
        return faithful_rule(s, backend)
    r = s.router
    router: Any
    if isinstance(r, FixedRouter):
        router = FixedWeights(r.alpha, r.beta)
    elif isinstance(r, FileRouter):
        router = UnboundProbe(r.path)
    else:
        router = AgreementRouter()
    a = s.adacd
    adacd = AdaCDRule(alpha=a.alpha, lam=a.lam, beta=a.beta, steps=a.steps) if a else None
    return ExpertsRule(router=router, adacd=adacd)


def _with_prompt(messages: list[dict[str, Any]], prompt: str | None, system_role: bool
                 ) -> list[dict[str, Any]]:
    from guardrail.engine import add_safety_prompt

    return add_safety_prompt(messages, prompt, system_role=system_role) if prompt else messages


def expert_conversations(
    s: ExpertsStrategy, plain: Sequence[Message], *, system_role: bool
) -> list[list[dict[str, Any]]]:
    """Each stream's messages: safety expert, helpfulness expert, then AdaCD's safety stream
    (faithful mode: the conversation alone, the experts live inside the model)."""
    base = [dict(m) for m in plain]
    if is_faithful(s):
        return [base]
    out = []
    for e in (s.safety, s.helpfulness):
        assert isinstance(e, PromptExpert) and not isinstance(e, LoraAdapterExpert)
        out.append(_with_prompt([dict(m) for m in base], e.system_prompt, system_role))
    if s.adacd is not None and s.adacd.steps > 0:
        out.append(_with_prompt([dict(m) for m in base], s.adacd.safety_prompt, system_role))
    return out


def bind_prompt_router(rule: Any, backend: Backend, plain: Sequence[Message]) -> Any:
    """Replace an unbound probe by its weights for this conversation; other rules pass through."""
    if not isinstance(rule, ExpertsRule) or not isinstance(rule.router, UnboundProbe):
        return rule
    from guardrail.experts.probe import load_probe, probe_weights

    probe = load_probe(rule.router.path)
    return replace(rule, router=probe_weights(probe, backend, plain))
