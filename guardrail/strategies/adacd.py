"""``strategy: adacd``: AdaCD (docs/methods.md §1.3) over the conversation (O) and the same
conversation under the extreme safety prompt (S), for K contrastive steps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guardrail.decoding.adacd import AdaCDRule
from guardrail.policy.strategies import AdaCDStrategy
from guardrail.strategies.prompts import add_safety_prompt
from guardrail.strategies.registry import Plan, Tools, register

if TYPE_CHECKING:
    from guardrail.engine import Engine


def adacd_rule(s: AdaCDStrategy) -> AdaCDRule:
    """The rule of an AdaCD config (also the experts strategy's optional AdaCD on top)."""
    return AdaCDRule(alpha=s.alpha, lam=s.lam, beta=s.beta, steps=s.steps)


@register("adacd")
def plan(s: AdaCDStrategy, engine: Engine, messages: list[dict[str, Any]], tools: Tools) -> Plan:
    """Streams O and S (S only when K > 0), the AdaCD rule."""
    convs = [messages]
    if s.steps > 0:
        convs.append(add_safety_prompt(messages, s.safety_prompt, system_role=engine.system_role))
    return Plan([engine.backend.encode_chat(c, tools=tools) for c in convs], adacd_rule(s))
