"""Serving throughput: `guardrail serve` under concurrent clients, against llama.cpp's own server.

One run measures, on one GGUF (default: the embedded model), greedy, ``--tokens`` new tokens:

* **serialised** — the path before continuous batching: 8 threads, each request decoded alone
  holding the model (the baseline row);
* **one batch** — the same 8 requests decoded as one batch by the loop, in process (the
  batching limit);
* **guardrail serve** — ``plain`` and ``balanced`` at 1, 4, 8, 16 concurrent clients over HTTP
  (SSE streaming, closed loop: each client sends its next request when the last one ends);
* **llama-server** — llama.cpp's server (``-np 8``, built by ``build_llama_server.sh`` from the
  source the installed llama-cpp-python vendors) at the same concurrencies.

Aggregate tokens/s = completion tokens of all requests / wall time; time to first token (TTFT)
is the time from sending a request to its first streamed text; "steady" leaves out each
client's first request (all clients start at once, so their first prompts are prefilled one
after another whatever the server does). Both servers get 1 thread for
single-token decoding (half the cores, llama-cpp-python's default) and all cores for
batches; both call llama.cpp with at most 32 tokens per call. Prints a table and the ratios the targets are
stated in; ``--json`` writes every number.

    python benchmarks/bench_serve.py [--model PATH] [--tokens 64] [--clients 1,4,8,16]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
LLAMA_SERVER = "llama-server"  # the model name the anchor's requests carry
PROMPTS = [
    "Write a long story about a lighthouse keeper.", "Explain in detail how bread is made.",
    "Describe a walk through a forest in autumn.", "Write a long letter to a friend abroad.",
    "Explain how a bicycle works, part by part.", "Tell a long story about a lost cat.",
    "Describe the history of the printing press.", "Write a long poem about the sea.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def process(cmd: list[str], port: int, ready: str, timeout: float = 600) -> Iterator[str]:
    """Run a server; yield its base URL once ``ready`` answers 200; stop it afterwards."""
    log = open(f"/tmp/bench_serve_{port}.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited ({proc.returncode}); see {log.name}")
            try:
                if httpx.get(base + ready, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > end:
                raise RuntimeError(f"{cmd[0]} did not start in {timeout} s")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def one_request(client: httpx.Client, url: str, model: str, prompt: str,
                tokens: int) -> tuple[float, int]:
    """(TTFT s, completion tokens) of one streamed chat completion. llama-server is asked not
    to reuse a cached prompt (``cache_prompt: false``), so both servers do the same work."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if model == LLAMA_SERVER:
        body["cache_prompt"] = False
    t0 = time.perf_counter()
    ttft, used = None, 0
    with client.stream("POST", url + "/v1/chat/completions", json=body, timeout=600,
                       headers={"Connection": "close"}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for ch in chunk.get("choices") or []:
                if ttft is None and (ch.get("delta") or {}).get("content"):
                    ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                used = int(chunk["usage"]["completion_tokens"])
    return (ttft if ttft is not None else time.perf_counter() - t0), used


def sweep(url: str, model: str, clients: int, per_client: int, tokens: int) -> dict[str, Any]:
    """``clients`` closed-loop clients × ``per_client`` requests: throughput and TTFT."""
    ttfts: list[float] = []
    steady: list[float] = []  # TTFTs after each client's first request (no start-up burst)
    total = [0]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client(c: int) -> None:
        try:
            with httpx.Client() as http:
                for k in range(per_client):
                    t, n = one_request(http, url, model, PROMPTS[(c + k) % len(PROMPTS)], tokens)
                    with lock:
                        ttfts.append(t)
                        if k > 0:
                            steady.append(t)
                        total[0] += n
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    def p95(xs: list[float]) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))] if xs else float("nan")

    return {"clients": clients, "requests": len(ttfts), "tokens": total[0],
            "tok_s": total[0] / wall, "ttft_p50": statistics.median(ttfts),
            "ttft_p95": p95(ttfts), "ttft_p95_steady": p95(steady)}


def in_process(model: str | None, tokens: int) -> dict[str, float]:
    """The serialised baseline and the one-batch limit, decoded in this process."""
    from guardrail.adapters.llamacpp import LlamaCppBackend

    from guardrail.engine import Engine
    from guardrail.models import resolve_model_path
    from guardrail.policy import load_policy

    backend = LlamaCppBackend(resolve_model_path(model), n_ctx=1024, n_seq_max=17,
                              kv="per_stream")  # threads: the server's defaults
    engine = Engine(backend)
    policy = load_policy("plain")

    def reqs() -> list[Any]:
        out = []
        for p in PROMPTS:
            r = engine.request(policy, [{"role": "user", "content": p}])
            r.max_new_tokens = tokens
            out.append(r)
        return out

    engine.generate_many(reqs()[:1])  # warm
    t0 = time.perf_counter()
    batch = engine.generate_many(reqs())
    limit = sum(g.completion_tokens for g in batch) / (time.perf_counter() - t0)
    done: list[int] = []

    def alone(r: Any) -> None:  # the old path: each request holds the model throughout
        done.extend(ev.token_ids for ev in engine._alone([r], [0], "raise")
                    if hasattr(ev, "token_ids"))

    ths = [threading.Thread(target=alone, args=(r,)) for r in reqs()]
    t0 = time.perf_counter()
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    serial = sum(map(len, done)) / (time.perf_counter() - t0)
    backend.close()
    return {"one_batch_tok_s": limit, "serialised_tok_s": serial}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="GGUF (default: the embedded model)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--per-client", type=int, default=3, help="requests per client")
    ap.add_argument("--llama-server", default=None, help="llama-server binary (default: build)")
    ap.add_argument("--skip-llama-server", action="store_true")
    ap.add_argument("--json", default=None, help="write every number here")
    args = ap.parse_args()
    from guardrail.models import resolve_model_path

    gguf = str(resolve_model_path(args.model))
    levels = [int(c) for c in args.clients.split(",")]
    cores = os.cpu_count() or 1
    out: dict[str, Any] = {"model": Path(gguf).name, "tokens": args.tokens, "cores": cores}

    port = free_port()
    ours = [str(ROOT / ".venv/bin/guardrail"), "serve", "--policy", "plain", "--policy",
            "balanced", "--port", str(port), "--model", gguf,
            "--n-ctx", "1024", "--n-streams", "33", "--max-queue", "256",
            "--log-level", "warning"]
    anchor: list[str] | None = None
    if not args.skip_llama_server:
        binary = args.llama_server or subprocess.run(
            ["bash", str(ROOT / "benchmarks/build_llama_server.sh")], check=True,
            capture_output=True, text=True).stdout.strip().splitlines()[-1]
        lport = free_port()
        anchor = [binary, "-m", gguf, "-np", "8", "-c", str(8 * 1024),
                  "-t", str(max(1, cores // 2)), "-tb", str(cores), "--port", str(lport),
                  "--host", "127.0.0.1", "--jinja", "-b", "32", "-ub", "32"]
    # Both servers run side by side (an idle one costs nothing) and each concurrency level is
    # measured on all of them back to back, so a slow spell of a shared machine hits all rows.
    with process(ours, port, "/health") as url, (
        process(anchor, lport, "/health") if anchor else nullcontext("")
    ) as lurl:
        targets = [("plain", url, "plain"), ("balanced", url, "balanced")]
        if lurl:
            targets.append(("llama_server", lurl, LLAMA_SERVER))
        for key, base, model in targets:
            sweep(base, model, 1, 1, 8)  # warm (the balanced probe loads or calibrates once)
            out[key] = []
        for c in levels:
            for key, base, model in targets:
                row = sweep(base, model, c, args.per_client, args.tokens)
                out[key].append(row)
                print(f"{key:12s} {row}", flush=True)

    out.update(in_process(args.model, args.tokens))
    print(f"in process: {out['one_batch_tok_s']:.1f} tok/s one batch of 8, "
          f"{out['serialised_tok_s']:.1f} tok/s serialised (8 threads)")
    at = {k: {r["clients"]: r for r in out[k]} for k in ("plain", "balanced", "llama_server")
          if k in out}
    if 8 in at["plain"] and 1 in at["plain"]:
        ratios = {
            "plain@8 / one batch": at["plain"][8]["tok_s"] / out["one_batch_tok_s"],
            "plain@8 / serialised": at["plain"][8]["tok_s"] / out["serialised_tok_s"],
            "ttft p95@8 / ttft p50@1": at["plain"][8]["ttft_p95"] / at["plain"][1]["ttft_p50"],
            "ttft p95@8 steady / ttft p50@1": (at["plain"][8]["ttft_p95_steady"]
                                               / at["plain"][1]["ttft_p50"]),
        }
        if "llama_server" in at:
            ls = at["llama_server"]
            ratios |= {
                "plain@8 / llama-server@8": at["plain"][8]["tok_s"] / ls[8]["tok_s"],
                "plain@1 / llama-server@1": at["plain"][1]["tok_s"] / ls[1]["tok_s"],
                "balanced@8 / llama-server@8": at["balanced"][8]["tok_s"] / ls[8]["tok_s"],
            }
        out["ratios"] = ratios
        for k, v in ratios.items():
            print(f"{k:32s} {v:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())
