"""Policy glue for ``strategy: experts``: streams, the rule, and the prompt probe binding.

Imports no torch unless a probe router is used, so the portable mode runs on llama.cpp alone.
"""

from __future__ import annotations

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


def _faithful_not_wired(s: ExpertsStrategy) -> None:
    kinds = {s.safety.kind, s.helpfulness.kind}
    if "lora" in kinds:
        raise NotImplementedError(
            "strategy experts with lora experts (faithful mode) is not wired into policies yet: "
            "use guardrail.experts.load_mix(model, safety, helpfulness, router) with "
            "FaithfulRule from Python (docs/experts.md); LoRA-per-sequence experts on llama.cpp "
            "are not implemented"
        )


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


def experts_rule(s: ExpertsStrategy) -> ExpertsRule:
    """The portable rule a policy's experts strategy names."""
    _faithful_not_wired(s)
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
    """Each stream's messages: safety expert, helpfulness expert, then AdaCD's safety stream."""
    _faithful_not_wired(s)
    base = [dict(m) for m in plain]
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
    from guardrail.experts.probe import probe_weights
    from guardrail.experts.router_file import ProbeWeights, load_router
    from guardrail.experts.errors import RouterFileError

    probe = load_router(rule.router.path)
    if not isinstance(probe, ProbeWeights):
        raise RouterFileError(
            f"router file {rule.router.path!r} is a per-layer {probe.kind} router (faithful "
            "mode); prompt experts need a probe router (`guardrail router train`)"
        )
    return replace(rule, router=probe_weights(probe, backend, plain))
