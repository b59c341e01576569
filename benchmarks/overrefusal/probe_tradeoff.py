"""Pick the probe's L2 and zones for gated_cd on a tuning split, without a scoring prompt.

Every prompt of TUNE (a labelled CSV) gets a cross-fitted P(harmful): 5 folds, each prompt scored
by a probe trained on the other four folds plus the shipped extra calibration prompts
(``guardrail/data/calibration_extra.csv``: JailbreakBench even rows, Vicuna-Bench), averaged over
three fold seeds; features as the ``auto`` probe reads them (llama.cpp). A prompt at or above
``refuse_above`` is answered as the REFUSE run answered it (gated_cd with probe threshold 0 and
refuse_above 0: every prompt in the refuse zone); one at or above τ as plain decoding; one below
``ban_below`` as the "ban everything" run (threshold 1, ban_below 1); one in between as the
"contrast everything" run (threshold 1, ban_below 0). So four runs give the whole trade-off.
Prints refusal on safe / unsafe per (l2, ban_below, τ, refuse_above), and how many unsafe
prompts plain refused that the combination answers ("lost").

With ``--system TEXT`` the runs were made under that deployment system prompt, and the probe
reads each prompt under it, as a policy with that ``system_prompt`` does; the probe is trained on
the prompts without it (as the ``auto`` probe is) unless ``--fit-system`` (trained under it too).
CONTRAST_RUN may be ``-`` (no contrast-only run: only ``ban_below = τ`` is printed), and BAN_RUN
too (no undo at all: only τ = 0, plain decoding below ``refuse_above``, is printed).

Usage: probe_tradeoff.py TUNE.csv PLAIN_RUN CONTRAST_RUN BAN_RUN REFUSE_RUN [MODEL.gguf]
       [--system TEXT [--fit-system]]
(run dirs from ``guardrail eval``; the policy is named ``plain`` in the first, ``undo`` in the
contrast and ban runs, ``refuse`` in the last)
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json

import numpy as np

from guardrail.loading import get_engine
from guardrail.policy import ModelConfig
from guardrail.probes.features import prompt_features
from guardrail.probes.logistic import fit_logistic
from guardrail.probes.prompt import _shipped_rows
from guardrail.strategies.prompts import with_system_prompt

DEV = "/root/.cache/guardrail-dev/qwen2.5-coder-0.5b-instruct.gguf"
GRID_LO = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
GRID_T = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
GRID_HI = (None, 0.3, 0.4, 0.5, 0.7, 0.9)


def outcomes(run: str, policy: str) -> dict[str, dict]:
    rows = (json.loads(line) for line in open(f"{run}/results.jsonl", encoding="utf-8"))
    return {r["id"]: r for r in rows if r["policy"] == policy}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tune")
    ap.add_argument("plain_run")
    ap.add_argument("contrast_run")
    ap.add_argument("ban_run")
    ap.add_argument("refuse_run")
    ap.add_argument("model", nargs="?", default=DEV)
    ap.add_argument("--system", default=None, help="Deployment system prompt of the runs.")
    ap.add_argument("--fit-system", action="store_true",
                    help="Train the probe under the deployment prompt too.")
    a = ap.parse_args()

    rows = list(csv.DictReader(open(a.tune, encoding="utf-8")))
    extra = _shipped_rows("calibration_extra.csv")
    backend = get_engine(ModelConfig(backend="llamacpp", path=a.model)).backend

    def feats(rs: list[dict], system: str | None):
        convs = [with_system_prompt([{"role": "user", "content": r["prompt"]}], system)
                 for r in rs]
        return prompt_features(backend, convs, progress=True)

    fit_system = a.system if a.fit_system else None
    x_fit, x_extra = feats(rows, fit_system), feats(extra, fit_system)
    x_read = x_fit if a.system == fit_system else feats(rows, a.system)
    y = np.array([r["label"] == "unsafe" for r in rows], dtype=float)
    y_extra = np.array([r["label"] == "unsafe" for r in extra], dtype=float)
    ids = [r["id"] for r in rows]
    plain = outcomes(a.plain_run, "plain")
    contrast = None if a.contrast_run == "-" else outcomes(a.contrast_run, "undo")
    ban = None if a.ban_run == "-" else outcomes(a.ban_run, "undo")
    refuse = outcomes(a.refuse_run, "refuse")
    runs = [r for r in (plain, contrast, ban, refuse) if r is not None]
    ev = [i for i in ids if all(i in run for run in runs)]
    n_safe = sum(plain[i]["label"] == "safe" for i in ev)
    print(f"{len(ev)} prompts answered by all runs ({n_safe} safe); system={a.system!r}, "
          f"fit_system={a.fit_system}")
    for name, run in (("plain", plain), ("contrast", contrast), ("ban", ban),
                      ("refuse", refuse)):
        if run is not None:
            s, u = (np.mean([run[i]["refused"] for i in ev if plain[i]["label"] == lab])
                    for lab in ("safe", "unsafe"))
            print(f"  {name} everywhere: refusal on safe {s:.3f}, on unsafe {u:.3f}")
    for l2 in (0.03, 0.1, 0.3):
        harms = []
        for seed in range(3):
            folds = np.array_split(np.random.default_rng(seed).permutation(len(ids)), 5)
            harm: dict[str, float] = {}
            for f in folds:
                train = np.setdiff1d(np.arange(len(ids)), f)
                w, b = fit_logistic(np.vstack([x_fit[train], x_extra]),
                                    np.concatenate([y[train], y_extra]), l2=l2)
                harm.update(zip([ids[i] for i in f], 1 / (1 + np.exp(-(x_read[f] @ w + b)))))
            harms.append(harm)
        for lo, t, hi in itertools.product(GRID_LO, GRID_T, GRID_HI):
            if lo > t or (hi is not None and hi < t) or (contrast is None and lo != t):
                continue
            if ban is None and t > 0:  # no undo run: only "never undo" (τ = 0)
                continue
            rates, lost = [], []
            for harm in harms:
                def pick(i: str, harm: dict[str, float] = harm) -> dict:
                    h = harm[i]
                    if hi is not None and h >= hi:
                        return refuse[i]
                    return plain[i] if h >= t else ban[i] if h < lo else contrast[i]
                rates.append([np.mean([pick(i)["refused"] for i in ev
                                       if plain[i]["label"] == lab]) for lab in ("safe", "unsafe")])
                lost.append(sum(plain[i]["label"] == "unsafe" and plain[i]["refused"]
                                and not pick(i)["refused"] for i in ev))
            s, u = np.mean(rates, axis=0)
            print(f"l2={l2} ban_below={lo} threshold={t} refuse_above={hi}: "
                  f"refusal on safe {s:.3f}, on unsafe {u:.3f}, lost {np.mean(lost):.1f}")


if __name__ == "__main__":
    main()
