"""Are batched answers the answers a request gets alone? Measured per backend and KV layout.

For each setting, the same prompts are decoded greedily three ways: one by one, from 8 threads at
once (continuous batching: requests join and leave the running batch), and as one batch. Each
batched answer is compared with the one-by-one answer: share identical, and for those that
differ, the first token that differs. Also prints tokens/s of each way (one run, noisy).

    python benchmarks/bench_batch_exact.py [--tokens 48] [--policies plain,adacd]
        [--settings llamacpp:unified,llamacpp:per_stream,transformers]
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from guardrail.engine import Engine, Generation
from guardrail.loading import get_engine
from guardrail.policy import load_policy
from guardrail.policy.model import ModelConfig

PROMPTS = [
    "What is the capital of France?", "Write a haiku about the sea.",
    "Explain photosynthesis briefly.", "How do I sort a list in Python?",
    "Tell me a joke about cats.", "What is 17 times 23?", "Give three tips for sleeping better.",
    "Who wrote Hamlet?", "How do I kill a Python process?", "Name three rivers in Europe.",
    "What does a compiler do?", "Describe a sunset in two sentences.",
]


def engine_for(setting: str) -> Engine:
    backend, _, kv = setting.partition(":")
    if backend == "llamacpp":
        n_ctx = 1024 if kv == "per_stream" else 8192
        return get_engine(ModelConfig(backend="llamacpp", kv=kv or "unified", n_ctx=n_ctx,
                                      n_streams=25, n_threads=1))
    return get_engine(ModelConfig(backend="transformers"))


def compare(alone: list[Generation], other: list[Generation]) -> dict[str, Any]:
    firsts = []
    for a, b in zip(alone, other):
        if a.token_ids != b.token_ids:
            firsts.append(next((i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids))
                                if x != y), min(len(a.token_ids), len(b.token_ids))))
    return {"identical": f"{len(alone) - len(firsts)}/{len(alone)}", "first_diff": firsts}


def run(setting: str, policy_name: str, tokens: int) -> dict[str, Any]:
    engine = engine_for(setting)
    policy = load_policy(policy_name)

    def req(p: str) -> Any:
        r = engine.request(policy, [{"role": "user", "content": p}])
        r.max_new_tokens = tokens
        return r

    engine.generate_many([req(PROMPTS[0])])  # warm
    out: dict[str, Any] = {"setting": setting, "policy": policy_name}
    t0 = time.perf_counter()
    alone = [engine.generate_many([req(p)])[0] for p in PROMPTS]
    out["alone_tok_s"] = sum(g.completion_tokens for g in alone) / (time.perf_counter() - t0)
    with ThreadPoolExecutor(8) as ex:
        t0 = time.perf_counter()
        threads = list(ex.map(lambda p: engine.generate_many([req(p)])[0], PROMPTS))
        out["threads_tok_s"] = sum(g.completion_tokens for g in threads) / (
            time.perf_counter() - t0)
    t0 = time.perf_counter()
    batch = engine.generate_many([req(p) for p in PROMPTS])
    out["batch_tok_s"] = sum(g.completion_tokens for g in batch) / (time.perf_counter() - t0)
    out["threads"] = compare(alone, threads)
    out["batch"] = compare(alone, batch)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--policies", default="plain,adacd")
    ap.add_argument("--settings", default="llamacpp:unified,llamacpp:per_stream,transformers")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    for setting in args.settings.split(","):
        for policy in args.policies.split(","):
            row = run(setting, policy, args.tokens)
            rows.append(row)
            print(f"{setting:20s} {policy:8s} 8 threads {row['threads']['identical']:>6s} "
                  f"(first diff {row['threads']['first_diff']}), one batch "
                  f"{row['batch']['identical']:>6s} (first diff {row['batch']['first_diff']}); "
                  f"tok/s alone {row['alone_tok_s']:.1f}, threads {row['threads_tok_s']:.1f}, "
                  f"batch {row['batch_tok_s']:.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
