"""Token picking and streamed text assembly."""

from __future__ import annotations

import numpy as np
import pytest

from guardrail.decoding.sampling import SamplingParams, sample
from guardrail.decoding.text import TextAssembler
from guardrail.errors import ConfigError


def test_greedy_is_argmax() -> None:
    z = np.array([0.1, 3.0, -np.inf, 2.9], dtype=np.float32)
    assert sample(z, SamplingParams(), np.random.default_rng(0)) == 1


def test_seeded_sampling_repeats_and_respects_top_k() -> None:
    z = np.log(np.array([0.4, 0.3, 0.2, 0.1], dtype=np.float32))
    p = SamplingParams(temperature=1.0, top_k=2, seed=7)
    a = [sample(z, p, r) for r in [p.rng()] for _ in range(50)]
    r2 = p.rng()
    b = [sample(z, p, r2) for _ in range(50)]
    assert a == b
    assert set(a) <= {0, 1}
    assert len(set(a)) == 2


def test_top_p_keeps_the_smallest_nucleus() -> None:
    z = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    p = SamplingParams(temperature=1.0, top_p=0.75, seed=1)
    rng = p.rng()
    draws = {sample(z, p, rng) for _ in range(200)}
    assert draws == {0, 1}


def test_masked_tokens_are_never_sampled() -> None:
    z = np.array([-np.inf, 0.0, -np.inf], dtype=np.float32)
    p = SamplingParams(temperature=2.0, seed=3)
    rng = p.rng()
    assert {sample(z, p, rng) for _ in range(50)} == {1}


@pytest.mark.parametrize(
    ("kw", "name"), [({"temperature": -1}, "temperature"), ({"top_k": -1}, "top_k"),
                     ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p")],
)
def test_bad_sampling_parameters_are_named(kw: dict[str, float], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        SamplingParams(**kw)  # type: ignore[arg-type]


PIECES = {1: "Hel", 2: "lo", 3: " wor", 4: "ld", 5: "<", 6: "STOP", 7: ">", 8: "!"}


def detok(ids: list[int]) -> str:
    return "".join(PIECES[i] for i in ids)


def test_text_is_released_incrementally() -> None:
    t = TextAssembler(detok)
    assert [t.push(i) for i in (1, 2, 3, 4)] == ["Hel", "lo", " wor", "ld"]
    assert t.flush() == ""


def test_stop_string_never_leaks() -> None:
    t = TextAssembler(detok, stop=["<STOP>"])
    out = [t.push(i) for i in (1, 2, 5, 6)]
    assert "".join(out) == "Hello"  # "<STOP" held back: could start the stop string
    assert t.stopped_by is None
    assert t.push(7) == ""
    assert t.stopped_by == "<STOP>"
    assert t.text == "Hello"


def test_held_back_text_is_released_when_it_cannot_be_a_stop() -> None:
    t = TextAssembler(detok, stop=["<STOP>"])
    assert t.push(1) == "Hel"
    assert t.push(5) == ""
    assert t.push(8) == "<!"


def test_incomplete_utf8_is_held_back() -> None:
    raw = {1: b"caf", 2: b"\xc3", 3: b"\xa9!"}

    def dec(ids: list[int]) -> str:
        return b"".join(raw[i] for i in ids).decode("utf-8", errors="replace")

    t = TextAssembler(dec)
    assert t.push(1) == "caf"
    assert t.push(2) == ""
    assert t.push(3) == "é!"
