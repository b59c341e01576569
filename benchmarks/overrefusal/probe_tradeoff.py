"""Pick the probe's L2 and threshold for gated_cd on a tuning split, without a scoring prompt.

Every prompt of TUNE (a labelled CSV) gets a cross-fitted P(harmful): 5 folds, each prompt scored
by a probe trained on the other four (the model's final hidden state of the prompt, llama.cpp).
A prompt the probe calls harmful is answered as plain decoding answered it; a harmless one as the
"undo everything" run answered it (gated_cd with the probe threshold at 1.0), so one plain run
and one undo run give the whole trade-off. Prints refusal on safe / unsafe per (l2, threshold).

Usage: probe_tradeoff.py TUNE.csv PLAIN_RUN_DIR UNDO_RUN_DIR [MODEL.gguf]
(run dirs from ``guardrail eval``; the policy named ``plain`` in the first, ``undo`` in the second)
"""

from __future__ import annotations

import csv
import json
import sys

import numpy as np

from guardrail.engine import get_engine
from guardrail.experts.probe import fit_logistic, prompt_features
from guardrail.policy import ModelConfig

DEV = "/root/.cache/guardrail-dev/qwen2.5-coder-0.5b-instruct.gguf"


def outcomes(run: str, policy: str) -> dict[str, dict]:
    rows = (json.loads(line) for line in open(f"{run}/results.jsonl", encoding="utf-8"))
    return {r["id"]: r for r in rows if r["policy"] == policy}


def main(tune: str, plain_run: str, undo_run: str, model: str = DEV) -> None:
    rows = list(csv.DictReader(open(tune, encoding="utf-8")))
    backend = get_engine(ModelConfig(backend="llamacpp", path=model)).backend
    x = prompt_features(backend, [[{"role": "user", "content": r["prompt"]}] for r in rows],
                        progress=True)
    y = np.array([r["label"] == "unsafe" for r in rows], dtype=float)
    ids = [r["id"] for r in rows]
    plain, undo = outcomes(plain_run, "plain"), outcomes(undo_run, "undo")
    ev = [i for i in ids if i in plain and i in undo]
    print(f"{len(ev)} prompts answered by both runs")
    folds = np.array_split(np.random.default_rng(0).permutation(len(ids)), 5)
    for l2 in (0.03, 0.1, 0.3):
        harm: dict[str, float] = {}
        for f in folds:
            train = np.setdiff1d(np.arange(len(ids)), f)
            w, b = fit_logistic(x[train], y[train], l2=l2)
            harm.update(zip([ids[i] for i in f], 1 / (1 + np.exp(-(x[f] @ w + b)))))
        for t in (0.3, 0.4, 0.5, 0.6):
            pick = {i: plain[i] if harm[i] >= t else undo[i] for i in ev}
            rate = {lab: np.mean([pick[i]["refused"] for i in ev if plain[i]["label"] == lab])
                    for lab in ("safe", "unsafe")}
            print(f"l2={l2} threshold={t}: refusal on safe {rate['safe']:.3f}, "
                  f"on unsafe {rate['unsafe']:.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
