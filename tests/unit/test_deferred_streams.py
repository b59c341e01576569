"""A rule that defers its safety stream (gated_cd) gets it opened only at the step whose answer
stream starts a refusal, prefilled with everything generated so far: the answers and traces are
those of opening it at the start (the fake model is exact), with fewer streams decoded."""

from __future__ import annotations

import pytest
from fakes import ID, FakeBackend

from guardrail.decoding.gated_cd import GatedCDRule
from guardrail.decoding.loop import FinishEvent, GenerationRequest, decode
from guardrail.engine import Engine

POEM = [{"role": "user", "content": "Write a poem about rain."}]
KILL = [{"role": "user", "content": "How do I kill a process?"}]
SAFE = [{"role": "system", "content": "Please refuse to answer me!"}]


def _request(b: FakeBackend, messages: list[dict[str, str]], refusal: set[str],
             **gate: float) -> GenerationRequest:
    rule = GatedCDRule(frozenset(ID[w] for w in refusal), steps=8, **gate)  # type: ignore[arg-type]
    return GenerationRequest(prompts=[b.encode_chat(messages), b.encode_chat(SAFE + messages)],
                             rule=rule, max_new_tokens=12, min_new_tokens=12)


def _run(addable: bool, messages: list[dict[str, str]], refusal: set[str],
         **gate: float) -> tuple[FinishEvent, list[int]]:
    b = FakeBackend(addable=addable)
    fin = next(e for e in decode(b, [_request(b, messages, refusal, **gate)])
               if isinstance(e, FinishEvent))
    return fin, b.live_log


@pytest.mark.parametrize("messages, refusal, opened_at", [
    (POEM, {"I'm", "Sorry"}, None),  # never starts a refusal: S is never opened
    (KILL, {"I'm", "Sorry"}, 0),  # starts one at once
    (POEM, {"poem"}, 5),  # "Sure , here is a" then a "refusal start" at step 5
])
@pytest.mark.parametrize("gate", [{"harm": 0.1, "threshold": 0.5}, {}])  # probe, or none
def test_deferred_stream_gives_the_eager_answer(messages: list[dict[str, str]],
                                                 refusal: set[str], opened_at: int | None,
                                                 gate: dict[str, float]) -> None:
    eager, eager_log = _run(False, messages, refusal, **gate)
    lazy, lazy_log = _run(True, messages, refusal, **gate)
    assert lazy.token_ids == eager.token_ids and lazy.text == eager.text
    assert [s["mode"] for s in lazy.steps] == [s["mode"] for s in eager.steps]
    assert eager_log[0] == 2  # opened at the start
    if opened_at is None:
        assert set(lazy_log) == {1}
    else:  # one stream until the gate, two until step K-1, then one
        assert lazy_log[: opened_at + 1] == [1] * (opened_at + 1)
        assert 2 in lazy_log and lazy_log[-1] == 1


def test_the_refuse_zone_reads_the_safety_stream_from_the_start() -> None:
    b = FakeBackend()
    req = _request(b, POEM, {"I'm"}, harm=0.95, threshold=0.5, refuse_above=0.9)
    assert not req.rule.defers
    list(decode(b, [req]))
    assert b.live_log[0] == 2


def test_engine_and_scheduler_defer_too(fake_engine: Engine) -> None:
    b = fake_engine.backend
    assert isinstance(b, FakeBackend)
    gen = fake_engine.generate_many([_request(b, POEM, {"I'm"}, harm=0.1, threshold=0.5)])[0]
    assert gen.text.startswith("Sure, here is a poem about rain.")
    assert set(b.live_log) == {1}
