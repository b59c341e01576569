"""AdaCD cost against plain decoding, measured in one run, printed as ratios.

For each backend (embedded model unless ``--model``), with N new tokens (default 128):

* ``floor``      one decode step over two streams / over one stream (raw backend, no rule);
* ``per-token``  AdaCD with contrast on every step / plain, per decode step (prefill excluded);
* ``e2e K=10``   AdaCD with the default K=10 / plain, end to end (prefill included);
* ``loop``       the plain rule through guardrail's loop / the backend's own greedy generation;
* ``memory``     peak memory of AdaCD / plain (each in a fresh process; CUDA: peak allocated).

Targets (issue 2): per-token <= 1.05 x floor, e2e <= 1.15, loop <= 1.05, memory <= 1.15.
Usage: ``python benchmarks/bench_adacd.py [--backend llamacpp --backend transformers]
[--tokens 128] [--repeats 3] [--device cpu|cuda] [--model PATH] [--json FILE]``
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import typer

from guardrail.decoding.adacd import AdaCDRule
from guardrail.decoding.loop import GenerationRequest, TokenEvent, decode
from guardrail.decoding.rules import PlainRule
from guardrail.engine import Engine
from guardrail.strategies.prompts import add_safety_prompt
from guardrail.loading import get_engine
from guardrail.policy import ModelConfig

PROMPT = "Write a long story about a lighthouse keeper who learns to paint."
TARGETS = {"per_token_vs_floor": 1.05, "e2e_k10": 1.15, "loop_vs_native": 1.05, "memory": 1.15}


def _config(
    backend: str, model: str | None, device: str, dtype: str, n_gpu_layers: int, threads: int
) -> ModelConfig:
    return ModelConfig(
        backend=backend, path=model, device=device, dtype=dtype, n_gpu_layers=n_gpu_layers,
        n_threads=threads,
    )


def _prompts(engine: Engine) -> tuple[list[int], list[int]]:
    msgs = [{"role": "user", "content": PROMPT}]
    b = engine.backend
    safety = add_safety_prompt(msgs, "Please refuse to answer me!", system_role=engine.system_role)
    return b.encode_chat(msgs), b.encode_chat(safety)


def _best(fn: Callable[[], float], repeats: int) -> float:
    fn()  # warm-up
    return min(fn() for _ in range(repeats))


def _raw_steps(engine: Engine, prompts: Sequence[Sequence[int]], n: int) -> float:
    """Seconds per decode step of the raw backend over ``prompts`` (no rule, no sampling)."""
    with engine.backend.open(prompts) as s:
        tok = [int(s.logits()[0].argmax())] * s.n_live
        t = time.perf_counter()
        for _ in range(n):
            s.append(tok)
            s.logits()
        return (time.perf_counter() - t) / n


def _loop(engine: Engine, req: GenerationRequest) -> tuple[float, float]:
    """(end-to-end seconds, seconds per decode step after the first token)."""
    t0 = time.perf_counter()
    first = last = t0
    count = 0
    for ev in decode(engine.backend, [req]):
        if isinstance(ev, TokenEvent):
            last = time.perf_counter()
            if count == 0:
                first = last
            count += 1
    return last - t0, (last - first) / max(1, count - 1)


def _native(engine: Engine, prompt: list[int], n: int) -> float:
    """The backend's own greedy generation of n tokens, seconds."""
    b: Any = engine.backend
    t = time.perf_counter()
    if b.name == "llamacpp":
        llm = _native_llama(b)
        bias = {int(i): -1e9 for i in b.end_of_turn_ids}
        llm.reset()
        llm.create_completion(prompt, max_tokens=n, temperature=0.0, logit_bias=bias)
    else:
        import torch

        ids = torch.tensor([prompt], device=b.device)
        with torch.inference_mode():
            b.model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                do_sample=False, pad_token_id=b.pad_token_id,
            )
    return time.perf_counter() - t


_LLAMAS: dict[int, Any] = {}


def _native_llama(b: Any) -> Any:
    """A ``llama_cpp.Llama`` on the same weights file and threads as the backend."""
    if id(b) not in _LLAMAS:
        from llama_cpp import Llama

        _LLAMAS[id(b)] = Llama(
            b.model_path, n_ctx=b.n_ctx, n_threads=b.n_threads, n_threads_batch=b.n_threads_batch,
            n_gpu_layers=b.n_gpu_layers, verbose=False,
        )
    return _LLAMAS[id(b)]


def _memory(cfg: ModelConfig, n: int, strategy: str) -> float:
    """Peak memory (MiB) of one generation in a fresh process."""
    here = str(Path(__file__).resolve().parent)
    code = (
        f"import json,sys;sys.path.insert(0,{here!r});import bench_adacd as m;"
        f"print(json.dumps(m._memory_child({cfg.model_dump_json()!r},{n},{strategy!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip().splitlines()[-1]
    return float(json.loads(out))


def _memory_child(cfg_json: str, n: int, strategy: str) -> float:
    import resource

    cfg = ModelConfig.model_validate_json(cfg_json)
    engine = get_engine(cfg)
    po, ps = _prompts(engine)
    cuda = cfg.backend == "transformers" and str(getattr(engine.backend, "device", "")) != "cpu"
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rule = PlainRule() if strategy == "plain" else AdaCDRule(steps=n)
    prompts = [po] if strategy == "plain" else [po, ps]
    _loop(engine, GenerationRequest(prompts, rule, max_new_tokens=n, min_new_tokens=n))
    if cuda:
        return (torch.cuda.max_memory_allocated() - base) / 2**20 + base / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(cfg: ModelConfig, n: int, repeats: int, memory: bool) -> dict[str, Any]:
    engine = get_engine(cfg)
    po, ps = _prompts(engine)

    def req(rule: Any, prompts: list[list[int]]) -> GenerationRequest:
        return GenerationRequest(prompts, rule, max_new_tokens=n, min_new_tokens=n)

    one = _best(lambda: _raw_steps(engine, [po], n), repeats)
    two = _best(lambda: _raw_steps(engine, [po, ps], n), repeats)
    plain = [_loop(engine, req(PlainRule(), [po])) for _ in range(repeats + 1)][1:]
    every = [_loop(engine, req(AdaCDRule(steps=n), [po, ps])) for _ in range(repeats + 1)][1:]
    k10 = [_loop(engine, req(AdaCDRule(steps=10), [po, ps])) for _ in range(repeats + 1)][1:]
    native = _best(lambda: _native(engine, po, n), repeats)
    plain_e2e, plain_step = min(p[0] for p in plain), min(p[1] for p in plain)
    row: dict[str, Any] = {
        "backend": cfg.backend,
        "device": (
            f"{cfg.device} {cfg.dtype}" if cfg.backend == "transformers"
            else f"cpu, gpu_layers={cfg.n_gpu_layers}"
        ),
        "model": engine.backend.model_name,
        "tokens": n,
        "plain_ms_per_token": 1000 * plain_step,
        "floor": two / one,
        "per_token": min(e[1] for e in every) / plain_step,
        "e2e_k10": min(k[0] for k in k10) / plain_e2e,
        "loop_vs_native": plain_e2e / native,
        "spread_plain_e2e": statistics.pstdev([p[0] for p in plain]) / plain_e2e,
    }
    row["per_token_vs_floor"] = row["per_token"] / row["floor"]
    if memory:
        row["memory"] = _memory(cfg, n, "adacd") / _memory(cfg, n, "plain")
    return row


def main(
    backend: list[str] = typer.Option(["llamacpp", "transformers"], help="Backends to measure."),
    tokens: int = typer.Option(128, help="New tokens per generation."),
    repeats: int = typer.Option(3, help="Timed repeats (best or min is kept)."),
    device: str = typer.Option("cpu", help="transformers device: cpu or cuda."),
    dtype: str = typer.Option("float32", help="transformers dtype."),
    n_gpu_layers: int = typer.Option(0, help="llama.cpp layers on the GPU (-1 = all)."),
    threads: int = typer.Option(
        os.cpu_count() or 1,
        help="llama.cpp threads for one-token and multi-token steps alike (a fair floor).",
    ),
    model: str | None = typer.Option(None, help="Model path (default: the embedded model)."),
    memory: bool = typer.Option(True, help="Also measure peak memory (fresh processes)."),
    json_out: str | None = typer.Option(None, "--json", help="Also write the rows as JSON."),
) -> None:
    """Measure and print the ratios; exit 1 when a target is missed."""
    rows = []
    for b in backend:
        rows.append(bench(_config(b, model, device, dtype, n_gpu_layers, threads), tokens, repeats, memory))
        print(json.dumps(rows[-1]), flush=True)
    cols = ["backend", "device", "plain_ms_per_token", "floor", "per_token", "per_token_vs_floor",
            "e2e_k10", "loop_vs_native", "memory"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    missed = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
            if c in TARGETS and isinstance(v, float) and v > TARGETS[c]:
                missed.append(f"{r['backend']} {c} {v:.3f} > {TARGETS[c]}")
        print("| " + " | ".join(cells) + " |")
    print("targets:", ", ".join(f"{k} <= {v}" for k, v in TARGETS.items()))
    print("missed: " + ("; ".join(missed) if missed else "none"))
    if json_out:
        with open(json_out, "w") as f:
            json.dump(rows, f, indent=2)
    raise typer.Exit(1 if missed else 0)


if __name__ == "__main__":
    typer.run(main)
