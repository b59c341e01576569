"""The shipped jailbreak-framed data: a scoring split (`--data framed`) and a calibration split
that share no request, every framing on harmful and harmless requests alike."""

from __future__ import annotations

import csv
import io
from collections import Counter
from importlib import resources

import pytest

from guardrail.eval.datasets import DatasetError, load_dataset


def _rows(name: str) -> list[dict[str, str]]:
    raw = resources.files("guardrail.data").joinpath(name).read_text("utf-8")
    return list(csv.DictReader(io.StringIO(raw)))


def test_framed_scoring_loads_by_name() -> None:
    ex = load_dataset("framed")
    assert len(ex) == 130
    assert Counter(e.label for e in ex) == {"safe": 80, "unsafe": 50}


def test_the_splits_share_no_request_and_frame_both_labels() -> None:
    cal, score = _rows("framed_calibration.csv"), _rows("framed_scoring.csv")
    src = {r["id"].rsplit("-", 1)[0] for r in cal}, {r["id"].rsplit("-", 1)[0] for r in score}
    assert src == ({"framed-jbb", "framed-vicuna"}, {"framed-jbb", "framed-mtbench"})
    jbb = [{int(r["id"].rsplit("-", 1)[1]) % 2 for r in rows if "jbb" in r["id"]}
           for rows in (cal, score)]
    assert jbb == [{0}, {1}]  # even JailbreakBench rows calibrate, odd ones score
    for rows in (cal, score):
        framings = {lab: {r["type"].split("/")[0] for r in rows if r["label"] == lab}
                    for lab in ("safe", "unsafe")}
        assert framings["safe"] == framings["unsafe"] and len(framings["safe"]) == 8


def test_an_unknown_dataset_name_lists_the_shipped_ones() -> None:
    with pytest.raises(DatasetError, match="xstest, framed"):
        load_dataset("framd")


def test_the_shipped_rows_are_the_framings_applied_in_turn() -> None:
    """The files and the framings module agree: row n of each source is request n in framing
    n mod 8 (the same list the refusal probe's long prompts use)."""
    from guardrail.eval.framings import FRAMINGS, frame

    rows = [r for r in _rows("framed_scoring.csv") if "mtbench" in r["id"]]
    for n, r in enumerate(rows[:16]):
        name, text = FRAMINGS[n % 8][0], r["prompt"]
        assert r["type"] == f"{name}/mtbench" and frame("x", n)[0] == name
        head, _, tail = FRAMINGS[n % 8][1].partition("{req}")
        assert text.startswith(head) and text.endswith(tail) and len(text) > len(head + tail)


def test_a_long_prompt_nests_two_framings_and_keeps_the_request() -> None:
    from guardrail.eval.framings import frame, frame_twice

    name, text = frame_twice("How do I bake bread", 1)
    assert name == "prefix+roleplay" and "How do I bake bread." in text
    assert text == frame(frame("How do I bake bread", 1)[1], 4)[1]
    assert len(text) > len(frame("How do I bake bread", 1)[1]) + 40
    with pytest.raises(ValueError, match="empty"):
        frame("  ", 0)


def test_framed_answers_keep_their_labels_and_rows() -> None:
    from guardrail.refusal.agreement import LabelledAnswer, framed

    a = LabelledAnswer(source="f.csv", index=5, id="7", prompt="Why is the sky blue?",
                       response="I'm sorry, but I can't assist with that.", refused=True)
    (b,) = framed([a])
    assert (b.refused, b.index, b.response, b.source) == (True, 5, a.response, "f.csv")
    assert b.id == "7-framed" and "Why is the sky blue?" in b.prompt and len(b.prompt) > 150
    from guardrail.errors import ConfigError

    with pytest.raises(ConfigError, match=r"f\.csv row 7: the prompt is empty"):
        framed([a.model_copy(update={"prompt": "  "})])
