"""What :class:`~guardrail.langchain.middleware.GuardrailMiddleware` decides outside a model
call: a request blocked before any decode, a tool result withheld before the model reads it.

* **Before the model** (``before_model``): the policy's request rules read the agent's
  conversation, exactly as the chat model's own check does (:func:`guardrail.guard.
  check_request`); a rule that answers (``replace``) ends the run with its message, so a
  blocked request loads and decodes nothing; a ``raise`` rule raises ``RefusalError``.
* **Tool results** (``wrap_tool_call``): a tool's output is text the model will read as
  trusted context, the way indirect prompt injection reaches an agent. It goes through the
  request rules, and, when the policy's strategy has a prompt probe with a ``refuse_above``
  zone, through the probe read as a user turn: a result the probe calls surely harmful is
  withheld too. A withheld result becomes an error ``ToolMessage`` that names the policy and
  the reason, never the withheld text; the messages a tool's ``Command`` adds are checked the
  same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

from guardrail.engine import Engine
from guardrail.guard import check_request
from guardrail.errors import ConfigError
from guardrail.langchain.messages import _text_of, to_template_messages
from guardrail.policy import Policy
from guardrail.probes.prompt import prompt_harm


@dataclass(frozen=True)
class Withheld:
    """Why a tool result was withheld."""

    reason: str  # "rule" or "probe"
    rule: str | None = None
    harm: float | None = None

    def record(self, policy: Policy, call_id: str | None, tool: str | None) -> dict[str, Any]:
        """What the agent state and ``on_step`` are told."""
        out: dict[str, Any] = {"kind": "tool_result", "policy": policy.name, "tool": tool,
                               "tool_call_id": call_id, "withheld": True, "reason": self.reason}
        if self.rule is not None:
            out["matched_rule"] = self.rule
        if self.harm is not None:
            out["probe"] = {"harm": round(self.harm, 4)}
        return out


def read_text(message: BaseMessage) -> str:
    """The text the model's template will read from ``message`` (its content blocks joined as
    the chat encoding joins them; content it cannot encode is read as its ``str``)."""
    try:
        return _text_of(message.content, "tool result")
    except ConfigError:
        return str(message.content)


def blocked_answer(policy: Policy, messages: Sequence[BaseMessage]) -> AIMessage | None:
    """The rule's answer when a request rule answers this conversation, else None."""
    verdict = check_request(policy, to_template_messages(messages))
    if verdict is None or not verdict.answers:
        return None
    meta = {"policy": policy.name, "strategy": policy.strategy.kind, "matched_rule":
            verdict.rule, "finish_reason": "rule", "refused": True, "decided": "before_model"}
    return AIMessage(verdict.message, response_metadata={"guardrail": meta,
                                                          "finish_reason": "stop"})


def check_tool_result(policy: Policy, text: str,
                      engine: Engine | Callable[[], Engine] | None) -> Withheld | None:
    """Whether ``text`` (a tool's output) must be withheld from the model, and why. ``engine``
    (or a function giving it, called only when the probe must read) runs the probe."""
    turn = [{"role": "user", "content": text}]
    verdict = check_request(policy, turn, what="tool result")  # a raise rule raises
    if verdict is not None and verdict.action != "allow":
        return Withheld("rule", rule=verdict.rule)
    probe = getattr(policy.strategy, "probe", None)
    limit = getattr(probe, "refuse_above", None)
    if probe is None or limit is None or engine is None or not text.strip():
        return None
    model = engine() if callable(engine) else engine
    harm = model.run(lambda: prompt_harm(probe.path, model.backend, turn))
    return Withheld("probe", harm=harm) if harm >= limit else None


def withheld_message(result: BaseMessage, policy: Policy, why: Withheld) -> BaseMessage:
    """What the model reads instead of a withheld tool output: an error ``ToolMessage`` for a
    result, the same kind of message with the notice as its text for any other message a tool's
    ``Command`` adds."""
    # the rule's name stays in the record, not in text the model could repeat to an attacker
    reason = ("it matched one of the policy's rules" if why.reason == "rule"
              else "the policy's probe reads it as a harmful request")
    notice = f"[The result of this tool call was withheld by policy {policy.name!r}: {reason}.]"
    call_id, name = getattr(result, "tool_call_id", None), getattr(result, "name", None)
    meta = {"guardrail": why.record(policy, call_id, name)}
    if isinstance(result, ToolMessage):
        return ToolMessage(content=notice, tool_call_id=result.tool_call_id, name=result.name,
                           status="error", response_metadata=meta)
    return result.model_copy(update={"content": notice, "response_metadata": meta,
                                     "additional_kwargs": {}, **(
                                         {"tool_calls": []} if isinstance(result, AIMessage)
                                         else {})})


def step_record(message: Any) -> dict[str, Any] | None:
    """The agent-state record of one guarded model step (from its guardrail metadata)."""
    if not isinstance(message, AIMessage):
        return None
    meta = message.response_metadata.get("guardrail")
    if not isinstance(meta, dict):
        return None
    keys = ("agent_step", "policy", "strategy", "refused", "replaced", "matched_rule",
            "finish_reason", "early_decision", "decided")
    return {"kind": "model", **{k: meta[k] for k in keys if k in meta},
            "tool_calls": len(message.tool_calls)}


__all__ = ["Withheld", "blocked_answer", "check_tool_result", "read_text", "step_record",
           "withheld_message"]
