"""One Guard enforces a policy around generation, for every entry point.

Before decoding, the policy's request rules are tried on the user's latest message (a match
that answers or raises costs no decode); after decoding, the policy's refusal detector decides
the answer and its ``on_refusal`` action applies. The chat model, ``guardrail chat`` and the
evaluation harness all go through this class, so a policy means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from guardrail.engine import Engine
from guardrail.errors import RefusalError
from guardrail.policy.schema import Action, Policy
from guardrail.refusal import get_detector
from guardrail.refusal.base import DecidesEarly, Detector, RefusalResult


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text of the latest user turn ('' when there is none)."""
    for m in reversed(messages):
        if str(m.get("role", "")).casefold() in ("user", "human"):
            return str(m.get("content") or "")
    return ""


def _strings(value: Any) -> list[str]:
    """Every string inside a tool call's arguments (keys and values, nested), as written."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return [] if value is None else [str(value)]


def input_texts(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every text of the conversation, latest first: each message's content, whatever its role
    (the caller writes the whole history, "assistant" turns included), and every string in the
    arguments of earlier tool calls."""
    out: list[str] = []
    for m in reversed(messages):
        out.append(str(m.get("content") or ""))
        for call in m.get("tool_calls") or []:
            fn = call.get("function", {}) if isinstance(call, Mapping) else {}
            out.extend(_strings(fn.get("name", "")))
            out.extend(_strings(fn.get("arguments", "")))
    return out


@dataclass(frozen=True)
class RequestVerdict:
    """A request rule that matched, and what it resolved to."""

    rule: str
    action: Action
    message: str

    @property
    def answers(self) -> bool:
        """Whether the rule answers instead of the model (``replace``): nothing is decoded."""
        return self.action == "replace"


def check_request(
    policy: Policy, messages: Sequence[Mapping[str, Any]], *, what: str = "request"
) -> RequestVerdict | None:
    """The first request rule (in order) matching any text of the conversation
    (:func:`input_texts`), or None; a rule whose action is ``raise`` raises
    :class:`RefusalError` here, before any decoding. Needs no model. ``what`` names the text
    in that error (a request, a tool result)."""
    hit = policy.match(input_texts(messages))
    if hit is None:
        return None
    rule, action = hit
    if action.action == "raise":
        raise RefusalError(f"policy {policy.name!r}: {what} matched rule {rule.name!r}")
    return RequestVerdict(rule.name, action.action, action.message)


@dataclass(frozen=True)
class AnswerVerdict:
    """The answer to deliver and how the policy decided it."""

    text: str
    refusal: RefusalResult
    replaced: bool = False


class Guard:
    """Enforce ``policy`` on requests and answers of ``engine``'s model."""

    def __init__(self, policy: Policy, engine: Engine) -> None:
        self.policy = policy
        self.engine = engine

    def check_request(self, messages: Sequence[Mapping[str, Any]]) -> RequestVerdict | None:
        """:func:`check_request` under this guard's policy."""
        return check_request(self.policy, messages)

    @property
    def detector(self) -> Detector:
        """The policy's refusal detector (built once per engine and refusal settings)."""
        cfg = self.policy.refusal
        return self.engine.cached(("refusal_detector", cfg.model_dump_json()),
                                  lambda: get_detector(cfg, self.engine))

    def review(self, prompt: str, answer: str) -> AnswerVerdict:
        """Decide ``answer`` to ``prompt`` and apply ``on_refusal``: pass it, replace it with the
        policy's message, or raise :class:`RefusalError`."""
        verdict = self.detector(prompt, answer)
        if not verdict.refused:
            return AnswerVerdict(answer, verdict)
        act = self.policy.on_refusal
        if act.action == "raise":
            raise RefusalError(
                f"policy {self.policy.name!r}: the answer was detected as a refusal by "
                f"{verdict.detector!r}"
            )
        if act.action == "replace":
            return AnswerVerdict(act.message, verdict, replaced=True)
        return AnswerVerdict(answer, verdict)

    def decide_early(self, prompt: str, partial: str) -> RefusalResult | None:
        """The detector's verdict on every answer that starts with ``partial``, or None while it
        cannot tell (or cannot decide before the end at all: the judge). A held answer is
        released once this says it is no refusal, and stays held to the end otherwise."""
        det = self.detector
        return det.decide_prefix(prompt, partial) if isinstance(det, DecidesEarly) else None

    @property
    def holds_answer(self) -> bool:
        """Whether the answer may be replaced at the end, so nothing can be streamed early."""
        return self.policy.on_refusal.action != "allow"


__all__ = [
    "AnswerVerdict", "Guard", "RequestVerdict", "check_request", "input_texts", "last_user_text",
]
