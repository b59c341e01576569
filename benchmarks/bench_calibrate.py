"""First-use cost of a probe-gated policy: calibrating the ``auto`` prompt probe of a model
(what ``balanced``'s first request to a model waits for, and what ``guardrail calibrate`` does
ahead of time), per backend, with the prompt reads one at a time and batched, in one run.

For each backend: the 430 calibration prompts' probe features read one prompt at a time
(:func:`~guardrail.probes.features.conversation_feature`) and batched
(:func:`~guardrail.probes.features.prompt_features`, which is what calibration uses), the
logistic fit, and how far the batched features are from the single reads (max relative
difference, and the largest change of P(harmful) over the calibration prompts between probes fit
on either). The table is in docs/policies.md.

    python benchmarks/bench_calibrate.py [--model PATH] [--backends llamacpp transformers]
        [--limit 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from guardrail.loading import get_engine
from guardrail.policy import ModelConfig
from guardrail.probes.features import conversation_feature, prompt_features
from guardrail.probes.logistic import fit_logistic
from guardrail.probes.prompt import calibration_prompts


def _timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def measure(backend: str, model: str | None, limit: int) -> dict[str, Any]:
    engine = get_engine(ModelConfig(backend=backend, path=model))  # type: ignore[arg-type]
    b = engine.backend
    prompts, harmful = calibration_prompts()
    if limit:
        prompts, harmful = prompts[:limit], harmful[:limit]
    convs = [[{"role": "user", "content": p}] for p in prompts]
    labels = np.array(harmful)
    one, t_one = _timed(lambda: engine.run(
        lambda: np.stack([conversation_feature(b, c) for c in convs])))
    many, t_many = _timed(lambda: engine.run(lambda: prompt_features(b, convs)))
    (w, c), t_fit = _timed(lambda: fit_logistic(many, labels, l2=0.1))
    w1, c1 = fit_logistic(one, labels, l2=0.1)

    def p(x: np.ndarray, w: np.ndarray, c: float) -> np.ndarray:
        return 1 / (1 + np.exp(-(x @ w + c)))

    return {
        "backend": backend, "model": b.model_name, "prompts": len(prompts),
        "one_at_a_time_s": round(t_one, 1), "batched_s": round(t_many, 1),
        "speedup": round(t_one / t_many, 2), "fit_s": round(t_fit, 2),
        "calibration_s": round(t_many + t_fit, 1),
        "max_rel_feature_diff": float(np.max(np.abs(many - one)) / np.max(np.abs(one))),
        "max_p_harmful_change": float(np.max(np.abs(p(many, w, c) - p(one, w1, c1)))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model path (default: the embedded model)")
    ap.add_argument("--backends", nargs="+", default=["llamacpp", "transformers"])
    ap.add_argument("--limit", type=int, default=0, help="first N calibration prompts (0: all)")
    ap.add_argument("--json", default=None, help="write the rows here too")
    args = ap.parse_args()
    rows = [measure(b, args.model, args.limit) for b in args.backends]
    print("| backend | model | prompts | one at a time (s) | batched (s) | speed-up | fit (s) "
          "| first-use calibration (s) | max rel. feature diff | max ΔP(harmful) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['model']} | {r['prompts']} | {r['one_at_a_time_s']} | "
              f"{r['batched_s']} | {r['speedup']}x | {r['fit_s']} | {r['calibration_s']} | "
              f"{r['max_rel_feature_diff']:.1e} | {r['max_p_harmful_change']:.1e} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
