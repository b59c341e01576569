"""Evaluation throughput: ``guardrail eval`` locally against ``guardrail eval --ray`` with 1
and 2 workers, and Ray's start-up overhead, in one run (the table in docs/scale.md).

Every configuration evaluates the same prompts x policies (default: 40 XSTest prompts x plain
and adacd, 16 new tokens, batches of 4) into a fresh directory, on this machine:

* **local** — :func:`guardrail.eval.run` in this process (one model);
* **ray, N workers** — :func:`guardrail.scale.eval.run_ray` on a local Ray cluster started by
  this script (``ray.init``, all cores), N worker actors of ``cores / N`` CPUs each (each loads
  the model once; llama.cpp uses that many threads).

Columns: wall time of the whole call (model loading included), answers/s over it, time to the
first row (model load, actor start-up and the first batch), and the steady rate after the
first row (what a long evaluation runs at). "Ray start-up" is ``ray.init`` (starting the local
cluster) plus the extra time to the first row over the local run. The last lines give the
arithmetic for N nodes from the measured per-worker rate.

    python benchmarks/bench_scale.py [--limit 40] [--tokens 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guardrail.eval import run
from guardrail.eval.results import ResultRow


def measure(label: str, call: Callable[[Callable[[ResultRow], None]], object]) -> dict[str, Any]:
    """Time ``call(on_row)``: wall time, time to the first row, steady rate after it."""
    stamps: list[float] = []
    t0 = time.perf_counter()
    call(lambda row: stamps.append(time.perf_counter()))
    wall = time.perf_counter() - t0
    first = stamps[0] - t0
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    out = {"config": label, "answers": len(stamps), "wall_s": wall,
           "answers_per_s": len(stamps) / wall, "first_row_s": first, "steady_per_s": steady}
    print(f"{label:<16} {len(stamps)} answers in {wall:.1f} s ({out['answers_per_s']:.2f}/s; "
          f"first row {first:.1f} s, then {steady:.2f}/s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policies", default="plain,adacd")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    policies = args.policies.split(",")
    cores = os.cpu_count() or 1
    common: dict[str, Any] = {"limit": args.limit, "max_new_tokens": args.tokens,
                              "batch_size": args.batch_size, "progress": False}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        rows.append(measure("local", lambda on_row: run(
            policies, "xstest", out=Path(tmp, "local"), on_row=on_row, **common)))

        import ray

        from guardrail.scale.eval import run_ray

        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=cores, include_dashboard=False,
                 logging_level="WARNING")
        init_s = time.perf_counter() - t0
        print(f"ray.init (local cluster, {cores} CPUs): {init_s:.1f} s", flush=True)
        try:
            for n in (int(w) for w in args.workers.split(",")):
                rows.append(measure(f"ray, {n} worker{'s' if n > 1 else ''}", lambda on_row, n=n:
                            run_ray(policies, "xstest", out=Path(tmp, f"ray{n}"), workers=n,
                                    cpus_per_worker=cores / n, on_row=on_row, **common)))
        finally:
            ray.shutdown()
    local = rows[0]
    print(f"\n{cores} cores; {len(policies)} policies x {args.limit} prompts, "
          f"{args.tokens} new tokens, batches of {args.batch_size}\n")
    print("| run | answers/s (whole call) | wall s | first row s | steady answers/s "
          "| Ray start-up s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        startup = "-" if r is local else f"{init_s + r['first_row_s'] - local['first_row_s']:.1f}"
        print(f"| {r['config']} | {r['answers_per_s']:.2f} | {r['wall_s']:.1f} | "
              f"{r['first_row_s']:.1f} | {r['steady_per_s']:.2f} | {startup} |")
    one = next((r for r in rows[1:] if r["config"] == "ray, 1 worker"), None)
    if one is not None:
        per = one["steady_per_s"]
        print(f"\nper worker (all {cores} cores): {per:.2f} answers/s steady; N such nodes: "
              f"~{per:.2f} x N answers/s, e.g. 10 000 answers on 8 nodes ~ "
              f"{10000 / (8 * per) / 60:.0f} min + start-up")
    if args.json:
        args.json.write_text(json.dumps({"ray_init_s": init_s, "cores": cores, "rows": rows},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
