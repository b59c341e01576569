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
