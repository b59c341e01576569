"""A held answer (``on_refusal: replace`` or ``raise``) is held only until the refusal detector
can decide on how it starts: an answer streams from then on, a refusal stays held and is
replaced (the chat model on the fake backend; the detectors' early verdicts checked against
their verdicts on the whole answer)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import guardrail.langchain.calls as calls
from guardrail import GuardedChatModel
from guardrail.engine import Engine
from guardrail.guard import Guard
from guardrail.policy import load_policy
from guardrail.refusal.base import RefusalResult
from guardrail.refusal.string_match import XSTEST_PREFIXES, StringMatchDetector, string_match


@pytest.fixture
def on_fake(fake_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    monkeypatch.setattr(calls, "get_engine", lambda cfg: fake_engine)
    return fake_engine


def test_string_match_decides_once_no_phrase_can_change_the_verdict() -> None:
    d = StringMatchDetector()
    assert d.decide_prefix("q", "") is None
    assert d.decide_prefix("q", "  I") is None  # "I cannot", "I'm sorry", ... may follow
    assert d.decide_prefix("q", "I'm sorr") is None
    refused = d.decide_prefix("q", "  I'm sorry, but")
    assert refused is not None and refused.refused
    answered = d.decide_prefix("q", "Sure")
    assert answered is not None and not answered.refused


WORDS = ["I", "I'm", "sorry", "Sorry", "cannot", "Sure", "here", "no", "As", "an", "AI", ",",
         " ", "  ", "\n", "Unfortunately", "can't", "help", "poem", "I'm sorry"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=8), st.booleans())
def test_string_match_early_verdicts_are_the_whole_answers(words: list[str], spaced: bool) -> None:
    whole = (" " if spaced else "").join(words)
    d = StringMatchDetector()
    want = string_match(whole, XSTEST_PREFIXES).refused
    for cut in range(len(whole) + 1):
        early = d.decide_prefix("q", whole[:cut])
        if early is not None:
            assert early.refused == want, (whole[:cut], whole)


class _WholeOnly:
    """A detector that can only read whole answers (like the judge)."""

    name = "whole_only"

    def __call__(self, prompt: str, response: str) -> RefusalResult:
        return RefusalResult(False, self.name)

    def detect_many(self, pairs: list[tuple[str, str]]) -> list[RefusalResult]:
        return [self(p, r) for p, r in pairs]


def test_a_detector_without_early_verdicts_holds_to_the_end(fake_engine: Engine) -> None:
    guard = Guard(load_policy("strict"), fake_engine)
    guard.engine.cached(("refusal_detector", guard.policy.refusal.model_dump_json()),
                        lambda: _WholeOnly())
    assert guard.decide_early("q", "Sure, here is a long answer") is None


def _held_policy(tmp_path: Path, action: str = "replace") -> str:
    path = tmp_path / "held.yaml"
    path.write_text(f"name: held\non_refusal: {{action: {action}, message: Not this one.}}\n"
                    "sampling: {max_new_tokens: 12}\n")
    return str(path)


def test_an_answer_streams_once_the_detector_decides(on_fake: Engine, tmp_path: Path) -> None:
    chunks = list(GuardedChatModel(policy=_held_policy(tmp_path)).stream(
        "Write a poem about rain."))
    texts = [c.content for c in chunks[:-1] if c.content]
    assert len(texts) >= 5  # "Sure" decides it; the rest streams token by token
    assert texts[0].strip() == "Sure"
    meta = chunks[-1].response_metadata["guardrail"]
    assert meta["early_decision"] == "answer" and not meta["refused"]
    assert "".join(str(c.content) for c in chunks) == "Sure, here is a poem about rain."


def test_a_refusal_stays_held_and_is_replaced(on_fake: Engine, tmp_path: Path) -> None:
    chunks = list(GuardedChatModel(policy=_held_policy(tmp_path)).stream("How do I kill it?"))
    assert [c.content for c in chunks] == ["Not this one."]  # nothing of the refusal leaked
    meta = chunks[-1].response_metadata["guardrail"]
    assert meta["early_decision"] == "refusal" and meta["replaced"]


def test_raise_releases_answers_early_too(on_fake: Engine, tmp_path: Path) -> None:
    chunks = list(GuardedChatModel(policy=_held_policy(tmp_path, "raise")).stream(
        "Write a poem about rain."))
    assert len([c for c in chunks if c.content]) >= 5
