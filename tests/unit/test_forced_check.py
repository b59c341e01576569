"""The forced-path check in the loop (guardrail/decoding/forced_check.py), on the fake model: a
ban that forces "Sure , here is ..." on a prompt the plain model refuses is held from the fork,
read, and kept or dropped for the model's own answer, with nothing dropped ever streamed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from fakes import ID, FakeBackend
from numpy.typing import NDArray

from guardrail.decoding.forced_check import ForcedPathCheck
from guardrail.decoding.gated_cd import GatedCDRule
from guardrail.decoding.loop import FinishEvent, GenerationRequest, TokenEvent, decode
from guardrail.decoding.processors import MinNewTokens
from guardrail.decoding.rules import PlainRule
from guardrail.engine import Engine
from guardrail.errors import ConfigError

KILL = [{"role": "user", "content": "How do I kill a process?"}]
POEM = [{"role": "user", "content": "Write a poem about rain."}]
SAFE = [{"role": "system", "content": "Please refuse to answer me!"}]
REFUSE = frozenset(ID[w] for w in ("I'm", "Sorry", "I"))


class Reader:
    """A check's read that answers ``harm`` and records what it was given."""

    def __init__(self, harm: float) -> None:
        self.harm = harm
        self.calls: list[list[int]] = []

    def __call__(self, ids: Sequence[int]) -> float:
        self.calls.append(list(ids))
        return self.harm


def _request(b: FakeBackend, messages: list[dict[str, str]], check: ForcedPathCheck | None,
             **kw: object) -> GenerationRequest:
    rule = GatedCDRule(REFUSE, steps=4, harm=0.0, threshold=0.3, ban_below=0.3)
    return GenerationRequest(prompts=[b.encode_chat(messages), b.encode_chat(SAFE + messages)],
                             rule=rule, max_new_tokens=14, check=check, **kw)  # type: ignore[arg-type]


def _run(b: FakeBackend, req: GenerationRequest) -> tuple[FinishEvent, list[TokenEvent]]:
    events = list(decode(b, [req]))
    fin = next(e for e in events if isinstance(e, FinishEvent))
    return fin, [e for e in events if isinstance(e, TokenEvent)]


def _streamed(fin: FinishEvent, tokens: list[TokenEvent]) -> str:
    return "".join(e.text for e in tokens) + fin.tail


def test_a_forced_answer_read_as_harmful_becomes_the_models_own() -> None:
    b = FakeBackend()
    forced, _ = _run(b, _request(b, KILL, None))
    assert forced.text.startswith("Sure")  # the ban undid the refusal
    read = Reader(0.9)
    fin, tokens = _run(b, _request(b, KILL, ForcedPathCheck(after=3, threshold=0.5, read=read)))
    plain = b.greedy(b.encode_chat(KILL), 14)
    assert fin.token_ids == plain and fin.text == "I'm sorry I cannot help with that."
    assert _streamed(fin, tokens) == fin.text  # the dropped tokens were never sent
    assert [e.step for e in tokens] == list(range(len(plain)))
    prompt = b.encode_chat(KILL)
    assert read.calls == [prompt + forced.token_ids[:3]]  # C = 3 tokens from the fork (step 0) on
    record = [s for s in fin.steps if s.get("check")]
    assert record == [{"step": 0, "mode": "fallback", "check": "fell_back", "answer_harm": 0.9}]


def test_a_forced_answer_read_as_harmless_is_released_unchanged() -> None:
    b = FakeBackend()
    forced, forced_tokens = _run(b, _request(b, KILL, None))
    read = Reader(0.1)
    fin, tokens = _run(b, _request(b, KILL, ForcedPathCheck(after=3, threshold=0.5, read=read)))
    assert fin.token_ids == forced.token_ids and fin.text == forced.text
    assert [(e.step, e.token, e.text) for e in tokens] == [
        (e.step, e.token, e.text) for e in forced_tokens]
    assert {"step": 2, "check": "kept", "answer_harm": 0.1} in fin.steps
    assert len(read.calls) == 1


def test_an_answer_that_never_forks_is_never_read_or_held() -> None:
    b = FakeBackend()
    read = Reader(1.0)
    fin, tokens = _run(b, _request(b, POEM, ForcedPathCheck(after=2, threshold=0.5, read=read)))
    assert read.calls == [] and fin.text == "Sure, here is a poem about rain."
    assert not [s for s in fin.steps if s.get("check")]


def test_an_answer_that_ends_before_c_tokens_is_read_at_its_end() -> None:
    b = FakeBackend()
    forced, _ = _run(b, _request(b, KILL, None))
    read = Reader(0.9)
    fin, tokens = _run(b, _request(b, KILL, ForcedPathCheck(after=50, threshold=0.5, read=read)))
    assert read.calls == [b.encode_chat(KILL) + forced.token_ids]  # all of it, end-of-turn too
    assert fin.token_ids == b.greedy(b.encode_chat(KILL), 14)
    assert _streamed(fin, tokens) == fin.text


def test_a_request_the_loop_cannot_rewind_fails_closed() -> None:
    """Processors keep state the loop cannot rewind: such a request is decoded under the
    fallback from its first token, so asking for a grammar never sheds the check."""
    b = FakeBackend()
    read = Reader(0.0)
    proc = MinNewTokens(b.end_of_turn_ids, 0)
    fin, _ = _run(b, _request(b, KILL, ForcedPathCheck(after=2, threshold=0.5, read=read),
                              processors=[proc]))
    assert read.calls == [] and fin.token_ids == b.greedy(b.encode_chat(KILL), 14)
    assert {"step": 0, "mode": "fallback", "check": "cannot_rewind"} in fin.steps
    rigid = FakeBackend(addable=False)  # streams cannot be re-added: the same
    fin, _ = _run(rigid, _request(rigid, KILL, ForcedPathCheck(after=2, threshold=0.5,
                                                               read=read)))
    assert fin.text == "I'm sorry I cannot help with that." and read.calls == []


def test_a_read_that_fails_counts_as_harmful() -> None:
    def broken(ids: Sequence[int]) -> float:
        raise RuntimeError("no hidden states")

    b = FakeBackend()
    fin, tokens = _run(b, _request(b, KILL, ForcedPathCheck(after=2, threshold=0.5,
                                                            read=broken)))
    assert fin.token_ids == b.greedy(b.encode_chat(KILL), 14)
    assert {"step": 0, "mode": "fallback", "check": "error"} in fin.steps
    assert _streamed(fin, tokens) == fin.text


@dataclass(frozen=True)
class ForksAt:
    """One stream, the model's own logits, a "comply" decision at the given steps."""

    at: frozenset[int]
    name: str = "forks_at"
    n_streams: int = 1

    def combine(self, logits: NDArray[np.float32], step: int
                ) -> tuple[NDArray[np.float32], dict[str, str]]:
        return logits[0], {"mode": "comply" if step in self.at else "plain"}

    def streams_needed(self, step: int) -> int:
        return 1


def test_a_later_fork_is_checked_again_after_a_kept_one() -> None:
    b = FakeBackend()
    read = Reader(0.1)
    prompt = b.encode_chat(POEM)
    req = GenerationRequest(prompts=[prompt], rule=ForksAt(frozenset({0, 5})), max_new_tokens=14,
                            check=ForcedPathCheck(after=2, threshold=0.5, read=read))
    fin, tokens = _run(b, req)
    answer = b.greedy(prompt, 14)
    assert fin.token_ids == answer
    assert read.calls == [prompt + answer[:2], prompt + answer[:7]]
    assert [e.step for e in tokens] == list(range(len(answer)))


@pytest.mark.parametrize("harm", [0.9, 0.1])
def test_requests_decoded_together_fall_back_alone(harm: float) -> None:
    """Through the scheduler, among answers that do not fork: each answer equals its own
    decoded alone, so one request's fallback leaves the others' streams in place."""
    b = FakeBackend(step_s=0.002)
    engine = Engine(b)
    reqs = [_request(b, m, ForcedPathCheck(after=2, threshold=0.5, read=Reader(harm)))
            for m in (POEM, KILL, POEM, KILL, POEM)]
    alone = [_run(FakeBackend(), r)[0] for r in reqs]
    together = engine.generate_many(reqs)
    assert [g.token_ids for g in together] == [a.token_ids for a in alone]
    assert [g.text for g in together] == [a.text for a in alone]
    kill = together[1].text
    assert kill.startswith("I'm") if harm > 0.5 else kill.startswith("Sure")


def test_check_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="after must be >= 1"):
        ForcedPathCheck(after=0, threshold=0.5, read=Reader(0))
    with pytest.raises(ConfigError, match=r"threshold must be in \(0, 1\]"):
        ForcedPathCheck(after=1, threshold=0.0, read=Reader(0))
    with pytest.raises(ConfigError, match="one stream"):
        ForcedPathCheck(after=1, threshold=0.5, read=Reader(0),
                        fallback=GatedCDRule(REFUSE, steps=2))
    assert ForcedPathCheck(after=1, threshold=0.5, read=Reader(0)).fallback == PlainRule()
