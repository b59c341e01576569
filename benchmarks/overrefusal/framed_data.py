"""Build ``guardrail/data/framed_calibration.csv`` and ``framed_scoring.csv``: requests wrapped in
jailbreak framings, harmful and harmless alike, in a calibration split and a scoring split that
share no request (columns ``id, prompt, label, type``; type = ``framing/source``).

Framings (our own wording of the techniques red-teaming suites such as garak probe for): a
novel's scene, role-play as a rule-free assistant, a hypothetical, a stated research or
teaching purpose, prefix injection, the "late grandmother" story, claimed authority, and
refusal suppression. Each is applied to harmful *and* harmless requests, so a probe calibrated
on them cannot learn "framed means harmful".

Requests and splits (row order of each source; the split never depends on a result):

* calibration: JailbreakBench harmful behaviours with an even index (the ones the ``auto``
  probe already calibrates on, unframed) and Vicuna-Bench's 80 questions;
* scoring: JailbreakBench's odd rows (left for evaluation everywhere) and MT-Bench's 80 first
  turns (never in any calibration).

Each request gets one framing, in turn (request i → framing i mod 8), so every framing meets
every kind of request and the files stay small: 130 calibration rows, 130 scoring rows.

Usage: framed_data.py JBB.csv VICUNA.jsonl MTBENCH.jsonl OUT_DIR
(the shipped copy was made from ../shared/data/jailbreakbench/harmful-behaviors.csv,
../shared/data/mt_bench/vicuna_bench_question.jsonl and ../shared/data/mt_bench/question.jsonl)
"""

from __future__ import annotations

import csv
import json
import sys

from guardrail.eval.framings import frame


def main(jbb: str, vicuna: str, mtbench: str, out_dir: str) -> None:
    goals = [r["Goal"] for r in csv.DictReader(open(jbb, encoding="utf-8"))]
    vic = [json.loads(line)["turns"][0] for line in open(vicuna, encoding="utf-8")]
    mt = [json.loads(line)["turns"][0] for line in open(mtbench, encoding="utf-8")]
    splits: dict[str, list[dict[str, str]]] = {"calibration": [], "scoring": []}
    sources = (("calibration", "jbb", [(i, g) for i, g in enumerate(goals) if i % 2 == 0],
                "unsafe"),
               ("calibration", "vicuna", list(enumerate(vic)), "safe"),
               ("scoring", "jbb", [(i, g) for i, g in enumerate(goals) if i % 2 == 1],
                "unsafe"),
               ("scoring", "mtbench", list(enumerate(mt)), "safe"))
    for split, source, items, label in sources:
        for n, (i, req) in enumerate(items):
            name, prompt = frame(req, n)
            splits[split].append({"id": f"framed-{source}-{i}", "prompt": prompt,
                                  "label": label, "type": f"{name}/{source}"})
    for split, rows in splits.items():
        out = f"{out_dir}/framed_{split}.csv"
        with open(out, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        print(f"{len(rows)} rows -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
