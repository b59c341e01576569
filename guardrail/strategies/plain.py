"""``strategy: plain``: the conversation as given, one stream, the model's own logits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guardrail.decoding.rules import PlainRule
from guardrail.policy.strategies import PlainStrategy
from guardrail.strategies.registry import Plan, Tools, register

if TYPE_CHECKING:
    from guardrail.engine import Engine


@register("plain")
def plan(s: PlainStrategy, engine: Engine, messages: list[dict[str, Any]], tools: Tools) -> Plan:
    """One stream: the conversation."""
    return Plan([engine.backend.encode_chat(messages, tools=tools)], PlainRule())
