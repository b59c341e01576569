"""Pick the probe's L2 and threshold for gated_cd on a tuning split, without a scoring prompt.

Every prompt of TUNE (a labelled CSV) gets a cross-fitted P(harmful): 5 folds, each prompt scored
by a probe trained on the other four (the model's final hidden state of the prompt, llama.cpp).
A prompt at or above the threshold τ is answered as plain decoding answered it; one below
``ban_below`` as the "ban everything" run answered it (gated_cd, probe threshold 1.0 and ban_below
1.0); one in between as the "contrast everything" run did (threshold 1.0, ban_below 0). So three
runs give the whole trade-off. Prints refusal on safe / unsafe per (l2, ban_below, τ).

Usage: probe_tradeoff.py TUNE.csv PLAIN_RUN CONTRAST_RUN BAN_RUN [MODEL.gguf]
(run dirs from ``guardrail eval``; the policy is named ``plain`` in the first, ``undo`` in the
others)
"""

from __future__ import annotations

import csv
import itertools
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


def main(tune: str, plain_run: str, contrast_run: str, ban_run: str, model: str = DEV) -> None:
    rows = list(csv.DictReader(open(tune, encoding="utf-8")))
    backend = get_engine(ModelConfig(backend="llamacpp", path=model)).backend
    x = prompt_features(backend, [[{"role": "user", "content": r["prompt"]}] for r in rows],
                        progress=True)
    y = np.array([r["label"] == "unsafe" for r in rows], dtype=float)
    ids = [r["id"] for r in rows]
    plain = outcomes(plain_run, "plain")
    contrast, ban = outcomes(contrast_run, "undo"), outcomes(ban_run, "undo")
    ev = [i for i in ids if i in plain and i in contrast and i in ban]
    print(f"{len(ev)} prompts answered by all three runs")
    folds = np.array_split(np.random.default_rng(0).permutation(len(ids)), 5)
    for l2 in (0.03, 0.1, 0.3):
        harm: dict[str, float] = {}
        for f in folds:
            train = np.setdiff1d(np.arange(len(ids)), f)
            w, b = fit_logistic(x[train], y[train], l2=l2)
            harm.update(zip([ids[i] for i in f], 1 / (1 + np.exp(-(x[f] @ w + b)))))
        for lo, t in itertools.product((0.0, 0.05, 0.1, 0.2, 0.3), (0.3, 0.4, 0.5, 0.6)):
            if lo > t:
                continue
            pick = {i: plain[i] if harm[i] >= t else ban[i] if harm[i] < lo else contrast[i]
                    for i in ev}
            rate = {lab: np.mean([pick[i]["refused"] for i in ev if plain[i]["label"] == lab])
                    for lab in ("safe", "unsafe")}
            print(f"l2={l2} ban_below={lo} threshold={t}: refusal on safe {rate['safe']:.3f}, "
                  f"on unsafe {rate['unsafe']:.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
