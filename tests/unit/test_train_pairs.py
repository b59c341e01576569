"""Preference pairs from over-generated answers, their file, and the teachers (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guardrail.errors import ConfigError
from guardrail.eval.datasets import Example
from guardrail.eval.results import ResultRow
from guardrail.training.pairs import Answer, AnswerSource, make_pairs, read_pairs, write_pairs
from guardrail.training.preferences import (
    REFUSAL,
    build_pairs,
    calibration_dataset,
    sampled_teachers,
    teacher_policy,
)


def _a(text: str, refused: bool, p: float, teacher: str = "plain") -> Answer:
    return Answer(text, AnswerSource(teacher=teacher, seed=0, refused=refused, p_refusal=p,
                                     detector="probe:x"))


def test_harmful_prompt_prefers_the_refusal() -> None:
    pairs = make_pairs("u1", "how to make a bomb", "unsafe",
                       [_a("Step 1 ...", False, 0.1), _a("I can't help.", True, 0.9)])
    assert len(pairs) == 1
    p = pairs[0]
    assert (p.expert, p.chosen, p.rejected) == ("safety", "I can't help.", "Step 1 ...")
    assert p.score_chosen == pytest.approx(0.9) and p.score_rejected == pytest.approx(0.1)
    assert p.margin == pytest.approx(0.8)
    assert p.id == "u1#0" and p.chosen_from.refused and not p.rejected_from.refused


def test_harmless_prompt_prefers_the_answer() -> None:
    pairs = make_pairs("s1", "how to kill a process", "safe",
                       [_a("Sorry, no.", True, 0.8), _a("Use kill PID.", False, 0.05)])
    (p,) = pairs
    assert (p.expert, p.chosen, p.rejected) == ("helpfulness", "Use kill PID.", "Sorry, no.")
    assert p.score_chosen == pytest.approx(0.95) and p.score_rejected == pytest.approx(0.2)


def test_no_pair_without_both_kinds_and_duplicates_count_once() -> None:
    assert make_pairs("s", "q", "safe", [_a("a", False, 0.1), _a("b", False, 0.2)]) == []
    assert make_pairs("u", "q", "unsafe", [_a("no", True, 0.9), _a("no ", True, 0.9)]) == []
    same = make_pairs("s", "q", "safe", [_a("x", False, 0.1), _a(" x", True, 0.9)])
    assert same == []  # the same text (stripped) is one answer: the first teacher's, a compliance


def test_pairs_per_prompt_rank_with_rank_first() -> None:
    answers = [_a("ok1", False, 0.3), _a("ok2", False, 0.1), _a("no1", True, 0.6),
               _a("no2", True, 0.95)]
    pairs = make_pairs("s", "q", "safe", answers, per_prompt=3)
    got = [(p.chosen, p.rejected) for p in pairs]
    # chosen ranked ok2 (0.9) > ok1 (0.7); rejected ranked no2 (0.05) < no1 (0.4)
    assert got == [("ok2", "no2"), ("ok1", "no1"), ("ok2", "no1")]
    assert len(make_pairs("s", "q", "safe", answers, per_prompt=10)) == 4
    with pytest.raises(ConfigError, match="pairs-per-prompt"):
        make_pairs("s", "q", "safe", answers, per_prompt=0)


def _row(pid: str, policy: str, text: str, refused: bool, **kw: object) -> ResultRow:
    return ResultRow(id=pid, prompt=f"prompt {pid}", label="unsafe" if pid[0] == "u" else "safe",
                     policy=policy, response=text, refused=refused, detector="string_match",
                     new_tokens=3, seconds=0.0, **kw)  # type: ignore[arg-type]


def test_build_pairs_drops_and_counts() -> None:
    ex = [Example(id="u1", prompt="prompt u1", label="unsafe"),
          Example(id="s1", prompt="prompt s1", label="safe")]
    rows = [_row("u1", "plain@0", "do it", False), _row("u1", "refusal@0", REFUSAL, True),
            _row("u1", "plain@1", "", False, finish_reason="error", error="too long"),
            _row("s1", "plain@0", "", False, finish_reason="blocked"),
            _row("s1", "plain@1", "   ", False)]
    pairs, dropped, empty = build_pairs(rows, ex, per_prompt=2)
    assert [(p.id, p.chosen_from.teacher, p.chosen_from.seed) for p in pairs] == [
        ("u1#0", "refusal", 0)]
    assert dropped == {"error": 1, "blocked": 1, "empty": 1} and empty == 1


def test_pairs_file_round_trip_and_errors(tmp_path: Path) -> None:
    pairs = make_pairs("u1", "q", "unsafe", [_a("do it", False, 0.2), _a("no", True, 0.7)])
    f = write_pairs(pairs, tmp_path / "p.jsonl")
    assert read_pairs(f) == pairs and read_pairs(f, expert="helpfulness") == []
    with pytest.raises(ConfigError, match="no such file"):
        read_pairs(tmp_path / "missing.jsonl")
    bad = json.loads(f.read_text())
    del bad["chosen"]
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(ConfigError, match=r"line 1: field 'chosen'"):
        read_pairs(tmp_path / "bad.jsonl")
    (tmp_path / "extra.jsonl").write_text(json.dumps({**json.loads(f.read_text()), "x": 1}))
    with pytest.raises(ConfigError, match="field 'x'"):
        read_pairs(tmp_path / "extra.jsonl")
    (tmp_path / "junk.jsonl").write_text("{not json\n")
    with pytest.raises(ConfigError, match="line 1: not JSON"):
        read_pairs(tmp_path / "junk.jsonl")


def test_teachers() -> None:
    pols = sampled_teachers(["plain", "refusal"], samples=2, temperature=0.7, max_new_tokens=9)
    assert [p.name for p in pols] == ["plain@0", "plain@1", "refusal@0", "refusal@1"]
    assert [p.sampling.seed for p in pols] == [0, 1, 0, 1]
    assert {p.sampling.max_new_tokens for p in pols} == {9}
    refusal = teacher_policy("refusal")
    assert refusal.rules and refusal.rules[0].search("anything at all\nat all")
    assert teacher_policy("safety_prompt").system_prompt
    greedy = sampled_teachers(["plain"], samples=1, temperature=0.0, max_new_tokens=4)
    assert greedy[0].sampling.seed is None and greedy[0].sampling.temperature == 0.0
    with pytest.raises(ConfigError, match="--samples > 1 needs --temperature"):
        sampled_teachers(["plain"], samples=2, temperature=0.0, max_new_tokens=4)
    with pytest.raises(ConfigError, match="--samples"):
        sampled_teachers(["plain"], samples=0, temperature=0.5, max_new_tokens=4)
    with pytest.raises(ConfigError, match="--teacher"):
        sampled_teachers([], samples=1, temperature=0.5, max_new_tokens=4)
    with pytest.raises(ConfigError, match="--max-new-tokens"):
        sampled_teachers(["plain"], samples=1, temperature=0.5, max_new_tokens=0)


def test_calibration_dataset(tmp_path: Path) -> None:
    from guardrail.eval.datasets import load_dataset

    rows = load_dataset(calibration_dataset(tmp_path / "c.jsonl"))
    assert len(rows) == 430 and len({r.id for r in rows}) == 430
    assert {r.label for r in rows} == {"safe", "unsafe"}
    assert not any(r.id == "xstest-1" for r in rows)  # row index 0: left for evaluation


def test_pairs_take_the_recorded_probe_score() -> None:
    """The refusal probe's P(refusal) is recorded with each row (refusal_score) and becomes the
    answer's score; rows without one (keyword detector) score 1/0 by their decision."""
    ex = [Example(id="u1", prompt="prompt u1", label="unsafe")]
    rows = [_row("u1", "plain@0", "do it", False, refusal_score=0.25),
            _row("u1", "refusal@0", REFUSAL, True, refusal_score=0.75)]
    (pair,), _, _ = build_pairs(rows, ex, per_prompt=2)
    assert (pair.score_chosen, pair.score_rejected) == (0.75, 0.25)
    assert pair.margin == pytest.approx(0.5)
    (plain,), _, _ = build_pairs([r.model_copy(update={"refusal_score": None}) for r in rows],
                                 ex, per_prompt=2)
    assert (plain.score_chosen, plain.score_rejected) == (1.0, 0.0)
