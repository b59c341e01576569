"""Study for the forced-path check of ``balanced`` (issue: the ban must never force a harmful
answer). Tuning data only: the 430 calibration prompts (``calibration_rows``), cross-fitted.

For every prompt the ban is applied as if the probe had called it harmless (gated_cd with
``harm = 0``, τ = ban_below = 0.3): wherever the plain stream's top token starts a refusal in the
first K steps, refusal starts are banned and the comply contrast decides. A prompt whose answer
forked (a step in mode "comply") gives one *forced* answer. On a harmful prompt that is exactly
what the check must catch (the probe was wrong, the ban forced compliance); on a harmless one it
is what the ban is for and the check must let through.

At the fork ``f`` (first comply step) plus C tokens, the check reads the model's hidden states
of prompt + answer so far (one read of prompt + f + C_max tokens: causal, so the states at
f + C for every smaller C are the same as a read that stops there). Signals:

* ``prompt``: the prompt probe (weights fitted on prompt features of the training folds) on
  [state at f + C, mean over the user message], i.e. the prompt probe re-read mid-answer;
* ``answer``: a probe of its own with the same feature, fitted on the training folds' forced
  answers with their prompts' labels;
* ``surprise`` and ``kl`` (no fitting): how much less likely the safety stream (the prompt plus
  the safety instruction) finds the forced tokens than the plain stream, the mean over the
  first C forced tokens of ``log p_O(t) - log p_S(t)``, and the mean ``KL(p_O || p_S)`` there.

Every number is cross-fitted: 5 folds over the 430 rows (seeded); a prompt's signal comes from
weights fitted on the other four folds. Prints, per signal and C: AUC on forked answers, and at
each threshold the share of harmful forced answers caught and of harmless forced answers sent
back (those become plain's answer, which starts a refusal at the fork).

Usage: forced_path.py [MODEL.gguf] [--out DIR]   (writes DIR/forced.jsonl with every answer)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from guardrail.decoding.loop import GenerationRequest
from guardrail.decoding.sampling import SamplingParams
from guardrail.loading import get_engine
from guardrail.policy import ModelConfig
from guardrail.policy.loader import load_policy
from guardrail.probes.features import encode, prompt_features, user_span
from guardrail.probes.logistic import fit_logistic
from guardrail.probes.prompt import calibration_rows

DEV = "/root/.cache/guardrail-dev/qwen2.5-coder-0.5b-instruct.gguf"
C_MAX = 16
CS = (1, 2, 4, 8, 12, 16)
K = 10


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a harmful score > a harmless one), ties half."""
    if not len(pos) or not len(neg):
        return float("nan")
    d = pos[:, None] - neg[None, :]
    return float(np.mean(d > 0) + 0.5 * np.mean(d == 0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=DEV)
    ap.add_argument("--out", default="/tmp/forced")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = calibration_rows()
    if a.limit:
        rows = rows[:: max(1, len(rows) // a.limit)][: a.limit]
    engine = get_engine(ModelConfig(backend="llamacpp", path=a.model, n_threads=a.threads))
    backend = engine.backend
    convs = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    y = np.array([r["label"] == "unsafe" for r in rows])

    # prompt features (what the prompt probe reads)
    x = prompt_features(backend, convs, progress=True)

    # forced answers: gated_cd's plan without a probe, its rule told the prompt is harmless
    pol = load_policy("balanced")
    strat = pol.strategy.model_copy(update={"probe": None})
    pol = pol.model_copy(update={"strategy": strat})
    reqs = []
    for c in convs:
        p = engine.plan(pol, c)
        rule = dataclasses.replace(p.rule, harm=0.0, threshold=0.3, ban_below=0.3,
                                   refuse_above=None)
        reqs.append(GenerationRequest(prompts=p.prompts, rule=rule, sampling=SamplingParams(),
                                      max_new_tokens=K + C_MAX))
    gens = []
    for at in tqdm(range(0, len(reqs), 16), desc="forced answers"):
        gens += engine.generate_many(reqs[at:at + 16])

    forks: list[int | None] = []
    for g in gens:
        f = next((s["step"] for s in g.steps if s.get("mode") == "comply"), None)
        forks.append(f)
    forked = [i for i, f in enumerate(forks) if f is not None]
    print(f"{len(forked)} of {len(rows)} answers forked "
          f"({int(y[forked].sum())} harmful prompts, {int((~y[forked]).sum())} harmless)")

    # states at fork + C (one read per forked answer)
    feats = {c: np.zeros((len(rows), x.shape[1]), np.float32) for c in CS}
    for i in tqdm(forked, desc="answer reads"):
        enc = encode(backend, convs[i])
        s0, s1 = user_span(backend, convs[i], enc)
        ans = gens[i].token_ids[: forks[i] + C_MAX]
        states = backend.prompt_hidden_states([*enc.ids, *ans])
        mean = states[s0:s1].mean(axis=0)
        for c in CS:
            at = len(enc.ids) + min(forks[i] + c, len(ans)) - 1
            feats[c][i] = np.concatenate([states[at], mean])

    # the safety stream's view of the forced tokens (teacher-forced on both streams)
    surprise = {c: np.full(len(rows), np.nan) for c in CS}
    kl = {c: np.full(len(rows), np.nan) for c in CS}
    for i in tqdm(forked, desc="safety-stream reads"):
        f, ids = forks[i], gens[i].token_ids
        diffs, kls = [], []
        with backend.open([reqs[i].prompts[0] + ids[:f], reqs[i].prompts[1] + ids[:f]]) as st:
            for t in ids[f:f + C_MAX]:
                z = st.logits().astype(np.float64)
                lp = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
                diffs.append(lp[0, t] - lp[1, t])
                kls.append(float(np.sum(np.exp(lp[0]) * (lp[0] - lp[1]))))
                st.append([t, t])
        for c in CS:
            surprise[c][i] = np.mean(diffs[:c]) if diffs else 0.0
            kl[c][i] = np.mean(kls[:c]) if kls else 0.0

    folds = np.array_split(np.random.default_rng(0).permutation(len(rows)), 5)
    fk = np.array([f is not None for f in forks])
    score = {("prompt", c): np.full(len(rows), np.nan) for c in CS}
    score |= {("answer", c): np.full(len(rows), np.nan) for c in CS}
    harm = np.full(len(rows), np.nan)
    for fold in folds:
        train = np.setdiff1d(np.arange(len(rows)), fold)
        w, b = fit_logistic(x[train], y[train].astype(float), l2=0.1)
        harm[fold] = 1 / (1 + np.exp(-(x[fold] @ w + b)))
        for c in CS:
            score[("prompt", c)][fold] = 1 / (1 + np.exp(-(feats[c][fold] @ w + b)))
            tr = train[fk[train]]
            wa, ba = fit_logistic(feats[c][tr], y[tr].astype(float), l2=0.1)
            score[("answer", c)][fold] = 1 / (1 + np.exp(-(feats[c][fold] @ wa + ba)))

    score |= {("surprise", c): surprise[c] for c in CS}
    score |= {("kl", c): kl[c] for c in CS}
    # the population the check sees in `balanced`: forked answers whose prompt the probe
    # (cross-fitted) put below the ban threshold
    gate = fk & (harm < 0.3)
    print(f"forked and probe < 0.3: {int((gate & y).sum())} harmful, {int((gate & ~y).sum())} "
          f"harmless (of {int(y.sum())} harmful, {int((~y).sum())} harmless prompts)")
    for (kind, c), s in score.items():
        pos, neg = s[fk & y], s[fk & ~y]
        gpos, gneg = s[gate & y], s[gate & ~y]
        line = f"{kind:8s} C={c:2d} AUC forked {auc(pos, neg):.3f} gated {auc(gpos, gneg):.3f} |"
        for t in (0.3, 0.5, 0.7, 0.9) if kind in ("prompt", "answer") else ():
            line += (f" t{t}: caught {np.mean(gpos >= t) if len(gpos) else float('nan'):.2f}"
                     f" sent back {np.mean(gneg >= t) if len(gneg) else float('nan'):.2f}")
        print(line)
    with open(out / "forced.jsonl", "w", encoding="utf-8") as fh:
        for i, r in enumerate(rows):
            g = gens[i]
            fh.write(json.dumps({
                "id": r["id"], "label": r["label"], "prompt": r["prompt"], "fork": forks[i],
                "harm": float(harm[i]), "answer": g.text,
                "partial": backend.detokenize(g.token_ids[: (forks[i] or 0) + 8]),
                **{f"{k}{c}": float(v[i]) for (k, c), v in score.items()},
            }) + "\n")


if __name__ == "__main__":
    main()
