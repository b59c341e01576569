"""Pick the probe's L2 and zones for gated_cd on a tuning split, without a scoring prompt.

Every prompt of TUNE (a labelled CSV) gets a cross-fitted P(harmful): 5 folds, each prompt scored
by a probe trained on the other four folds plus the shipped extra calibration prompts
(``guardrail/data/calibration_extra.csv``: JailbreakBench even rows, Vicuna-Bench), averaged over
three fold seeds; features as the ``auto`` probe reads them (llama.cpp). A prompt at or above
``refuse_above`` is answered as the REFUSE run answered it (gated_cd with probe threshold 0 and
refuse_above 0: every prompt in the refuse zone); one at or above τ as plain decoding; one below
``ban_below`` as the "ban everything" run (threshold 1, ban_below 1); one in between as the
"contrast everything" run (threshold 1, ban_below 0). So four runs give the whole trade-off.
Prints refusal on safe / unsafe per (l2, ban_below, τ, refuse_above).

Usage: probe_tradeoff.py TUNE.csv PLAIN_RUN CONTRAST_RUN BAN_RUN REFUSE_RUN [MODEL.gguf]
(run dirs from ``guardrail eval``; the policy is named ``plain`` in the first, ``undo`` in the
contrast and ban runs, ``refuse`` in the last)
"""

from __future__ import annotations

import csv
import itertools
import json
import sys

import numpy as np

from guardrail.loading import get_engine
from guardrail.probes.prompt import _shipped_rows
from guardrail.probes.logistic import fit_logistic
from guardrail.probes.features import prompt_features
from guardrail.policy import ModelConfig

DEV = "/root/.cache/guardrail-dev/qwen2.5-coder-0.5b-instruct.gguf"


def outcomes(run: str, policy: str) -> dict[str, dict]:
    rows = (json.loads(line) for line in open(f"{run}/results.jsonl", encoding="utf-8"))
    return {r["id"]: r for r in rows if r["policy"] == policy}


def main(tune: str, plain_run: str, contrast_run: str, ban_run: str, refuse_run: str,
         model: str = DEV) -> None:
    rows = list(csv.DictReader(open(tune, encoding="utf-8")))
    extra = _shipped_rows("calibration_extra.csv")
    backend = get_engine(ModelConfig(backend="llamacpp", path=model)).backend
    convs = [[{"role": "user", "content": r["prompt"]}] for r in rows + extra]
    feats = prompt_features(backend, convs, progress=True)
    x, x_extra = feats[: len(rows)], feats[len(rows) :]
    y = np.array([r["label"] == "unsafe" for r in rows], dtype=float)
    y_extra = np.array([r["label"] == "unsafe" for r in extra], dtype=float)
    ids = [r["id"] for r in rows]
    plain = outcomes(plain_run, "plain")
    contrast, ban = outcomes(contrast_run, "undo"), outcomes(ban_run, "undo")
    refuse = outcomes(refuse_run, "refuse")
    ev = [i for i in ids if all(i in run for run in (plain, contrast, ban, refuse))]
    print(f"{len(ev)} prompts answered by all four runs")
    for l2 in (0.03, 0.1, 0.3):
        harms = []
        for seed in range(3):
            folds = np.array_split(np.random.default_rng(seed).permutation(len(ids)), 5)
            harm: dict[str, float] = {}
            for f in folds:
                train = np.setdiff1d(np.arange(len(ids)), f)
                w, b = fit_logistic(np.vstack([x[train], x_extra]),
                                    np.concatenate([y[train], y_extra]), l2=l2)
                harm.update(zip([ids[i] for i in f], 1 / (1 + np.exp(-(x[f] @ w + b)))))
            harms.append(harm)
        for lo, t, hi in itertools.product((0.0, 0.05, 0.3), (0.3, 0.4, 0.5), (None, 0.7, 0.9)):
            if lo > t or (hi is not None and hi < t):
                continue
            rates = []
            for harm in harms:
                def pick(i: str) -> dict:
                    h = harm[i]
                    if hi is not None and h >= hi:
                        return refuse[i]
                    return plain[i] if h >= t else ban[i] if h < lo else contrast[i]
                rates.append([np.mean([pick(i)["refused"] for i in ev
                                       if plain[i]["label"] == lab]) for lab in ("safe", "unsafe")])
            s, u = np.mean(rates, axis=0)
            print(f"l2={l2} ban_below={lo} threshold={t} refuse_above={hi}: "
                  f"refusal on safe {s:.3f}, on unsafe {u:.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
