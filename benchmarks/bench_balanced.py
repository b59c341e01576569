"""End-to-end cost of the shipped ``balanced`` policy against plain decoding, one run, as ratios.

For each backend (embedded model unless ``--model``), N new tokens (default 128), through the
engine exactly as a chat model calls it (plan: the prompt probe's read and the streams; then the
loop), best of ``--repeats`` after a warm-up, each request cold (llama.cpp's saved prefills are
dropped first, so no request loads the prompt another one's read prefilled):

* ``plain``            the shipped ``plain`` policy;
* ``balanced``         the shipped ``balanced`` policy on a harmless prompt the model answers
                       (its usual path: the probe read, two streams for K steps, then one);
* ``forked``           ``balanced`` where the rule forks on the first token and holds the
                       answer (the ban's path), forced on any model by treating the answer's
                       own first word as a refusal start and calling every prompt harmless;
* ``forked + check``   the same with the forced-path check on (C 8), released (threshold 1);
* ``forked + fallback`` the same with a check that always falls back (threshold 1e-6): one
                       more read and one more prefill, the check's worst case;
* ``first use``        the first ``balanced`` request on a model with no cached ``auto``
                       probe (a fresh cache folder): the calibration it waits for, in seconds.

Target (issue 19): balanced end to end <= 1.15 x plain, the check included.
Usage: ``python benchmarks/bench_balanced.py [--backend llamacpp --backend transformers]
[--tokens 128] [--repeats 3] [--model PATH] [--threads 2] [--json FILE]``
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from typing import Any
from unittest import mock

import typer

from guardrail.loading import get_engine
from guardrail.policy import ModelConfig, load_policy
from guardrail.policy.loader import with_overrides

PROMPT = "Write a long story about a lighthouse keeper who learns to paint."
TARGET = 1.15


def _timed(engine: Any, policy: Any, n: int) -> tuple[float, Any]:
    msgs = [{"role": "user", "content": PROMPT}]
    forget = getattr(engine.backend, "forget_prefills", None)
    if forget is not None:  # every request cold: no prefill saved by an earlier one's read
        engine.run(forget)
    t0 = time.perf_counter()
    req = engine.request(policy, msgs)
    req = dataclasses.replace(req, max_new_tokens=n, min_new_tokens=n)
    gen = engine.generate_many([req])[0]
    return time.perf_counter() - t0, gen


def _best(engine: Any, policy: Any, n: int, repeats: int) -> tuple[float, Any]:
    _timed(engine, policy, n)  # warm-up
    runs = [_timed(engine, policy, n) for _ in range(repeats)]
    return min(r[0] for r in runs), runs[-1][1]


def _forked(balanced: Any, first_word: str, check: float | None) -> Any:
    """``balanced`` forced to fork on the first token on this prompt (see the docstring)."""
    probe: dict[str, Any] = {"threshold": 1.0, "ban_below": 1.0, "refuse_above": None}
    if check is not None:
        probe["check"] = {"after": 8, "threshold": check}
    return with_overrides(balanced, {"strategy": {"refusal_phrases": [first_word],
                                                  "probe": probe}})


def bench(cfg: ModelConfig, n: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as cache, \
            mock.patch.dict(os.environ, {"GUARDRAIL_CACHE": cache}):  # first use: no cached probe
        engine = get_engine(cfg)
        balanced = load_policy("balanced")
        t0 = time.perf_counter()
        _timed(engine, balanced, 1)
        first_use = time.perf_counter() - t0
        plain_s, plain_gen = _best(engine, load_policy("plain"), n, repeats)
        first_word = plain_gen.text.split()[0]
        rows = {"plain": plain_s}
        rows["balanced"], gen = _best(engine, balanced, n, repeats)
        harm = gen.probe.get("harm")
        for name, check in (("forked", None), ("forked + check", 1.0),
                            ("forked + fallback", 1e-6)):
            rows[name], _ = _best(engine, _forked(balanced, first_word, check), n, repeats)
    return {
        "backend": cfg.backend, "model": engine.backend.model_name, "tokens": n,
        "threads": cfg.n_threads, "harm": harm, "first_use_s": first_use,
        "seconds": rows, "ratio": {k: v / rows["plain"] for k, v in rows.items()},
    }


def main(
    backend: list[str] = typer.Option(["llamacpp", "transformers"], help="Backends to measure."),
    tokens: int = typer.Option(128, help="New tokens per answer."),
    repeats: int = typer.Option(3, help="Timed repeats (the best is kept)."),
    model: str = typer.Option(None, help="Model path (default: the embedded model)."),
    threads: int = typer.Option(None, help="CPU threads (default: the backend's)."),
    json_out: str = typer.Option(None, "--json", help="Also write the rows to this file."),
) -> None:
    rows = []
    for b in backend:
        cfg = ModelConfig(backend=b, path=model, n_threads=threads)
        row = bench(cfg, tokens, repeats)
        rows.append(row)
        typer.echo(f"\n{row['backend']} ({row['model']}, {tokens} tokens, P(harmful) of the "
                   f"prompt {row['harm']:.3f}); first use (calibration) {row['first_use_s']:.1f} s")
        typer.echo("| case | s end to end | x plain | target |\n|---|---|---|---|")
        for k, s in row["seconds"].items():
            target = f"<= {TARGET}" if k != "plain" else ""
            typer.echo(f"| {k} | {s:.2f} | {row['ratio'][k]:.3f} | {target} |")
    if json_out:
        with open(json_out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    typer.run(main)
