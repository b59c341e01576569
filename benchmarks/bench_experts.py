"""Cost of each expert mode against plain decoding, measured in one run, printed as ratios.

    python benchmarks/bench_experts.py --tokens 32 --repeats 3

    python benchmarks/bench_experts.py --backend llamacpp

Modes (embedded model, greedy, one prompt): plain (1 stream); two-stream floor (plain rule over
a batch of 2 identical streams, what any 2-stream rule pays); portable experts (fixed and
agreement routers, 2 streams); on transformers faithful experts (hooks with r=16 random LoRA
experts and a random folded router, 1 stream); on llama.cpp a LoRA expert stream (r=16 random
GGUF adapter on a second context: two decode calls per step) and a model expert (the model
loaded twice: two models, two decode calls). Targets (issue 6): faithful <= 1.25x plain;
portable <= 1.05x the two-stream floor.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guardrail.decoding.experts import AgreementWeights, ExpertsRule, FixedWeights
from guardrail.decoding.loop import GenerationRequest, decode
from guardrail.decoding.rules import PlainRule, Rule
from guardrail.loading import get_engine
from guardrail.policy import ModelConfig


class _TwoStreamPlain(PlainRule):
    @property
    def n_streams(self) -> int:
        return 2

    def streams_needed(self, step: int) -> int:
        return 2


def _adapters(model: Any, root: Path, r: int = 16) -> tuple[Path, Path]:
    import copy

    import torch

    import peft

    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        pm = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(
            r=r, lora_alpha=2 * r, target_modules=["down_proj"], init_lora_weights=False))
        pm.save_pretrained(str(root / str(seed)))
        out.append(root / str(seed))
        del pm
    return out[0], out[1]


def _gguf_lora(path: Path, layers: int, d_in: int, d_out: int, r: int = 16) -> Path:
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 2.0 * r)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.ffn_down.weight.lora_a",
                     rng.normal(0, 0.02, (r, d_in)).astype(np.float32))
        w.add_tensor(f"blk.{i}.ffn_down.weight.lora_b",
                     rng.normal(0, 0.02, (d_out, r)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _report(times: dict[str, float]) -> None:
    plain, floor = times["plain"], times["two-stream floor"]
    print(f"{'mode':<22}{'ms/token':>10}{'x plain':>10}{'x 2-stream floor':>18}")
    for k, t in times.items():
        print(f"{k:<22}{t * 1e3:>10.2f}{t / plain:>10.2f}{t / floor:>18.2f}")


def _per_token(backend: Any, ids: list[int], rule: Rule, tokens: int, repeats: int) -> float:
    """Best seconds per generated token of ``rule`` over ``repeats`` decodes of one prompt."""
    best = float("inf")
    for _ in range(repeats):
        req = GenerationRequest([ids] * rule.n_streams, rule, max_new_tokens=tokens)
        t = time.perf_counter()
        n = sum(1 for ev in decode(backend, [req]) if getattr(ev, "token", None) is not None)
        best = min(best, (time.perf_counter() - t) / max(n, 1))
    return best


def bench_llamacpp(tokens: int, repeats: int) -> dict[str, float]:
    """Policies through the engine, so the routed modes pay their real placement costs."""
    from guardrail.policy import Policy

    engine = get_engine(ModelConfig(backend="llamacpp"))
    msgs = [{"role": "user", "content": "Tell me about the history of tea."}]
    ids = engine.backend.encode_chat(msgs)

    def run_rule(rule: Rule) -> float:
        return _per_token(engine.backend, ids, rule, tokens, repeats)

    def run_policy(safety: dict) -> float:
        policy = Policy.model_validate({"strategy": {
            "kind": "experts", "safety": safety, "helpfulness": {"kind": "prompt"},
            "router": {"kind": "fixed", "alpha": 0.5, "beta": 0.5}},
            "sampling": {"max_new_tokens": tokens}})
        best = float("inf")
        for _ in range(repeats):
            req = engine.request(policy, msgs)
            t = time.perf_counter()
            n = len(engine.generate_many([req])[0].token_ids)
            best = min(best, (time.perf_counter() - t) / max(n, 1))
        return best

    with tempfile.TemporaryDirectory() as tmp:
        lora = _gguf_lora(Path(tmp) / "lora.gguf", 30, 1536, 576)
        run_rule(PlainRule())
        return {
            "plain": run_rule(PlainRule()),
            "two-stream floor": run_rule(_TwoStreamPlain()),
            "portable fixed": run_rule(ExpertsRule(FixedWeights(0.5, 0.5))),
            "portable agreement": run_rule(ExpertsRule(AgreementWeights())),
            "lora stream (r=16)": run_policy({"kind": "lora", "path": str(lora)}),
            "model expert": run_policy({"kind": "model", "model": {"n_ctx": 2048}}),
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", choices=["transformers", "llamacpp"], default="transformers")
    ap.add_argument("--trained", type=Path, default=None,
                    help="Also time the faithful mode on the experts and router written by "
                         "`guardrail train experts --out DIR` for the embedded model.")
    args = ap.parse_args()
    if args.backend == "llamacpp":
        _report(bench_llamacpp(args.tokens, args.repeats))
        return
    import torch

    from guardrail.experts import FaithfulRule, FoldedGates, find_down_projs, load_mix, save_router

    backend = get_engine(ModelConfig(backend="transformers")).backend
    ids = backend.encode_chat([{"role": "user", "content": "Tell me about the history of tea."}])

    def run(rule: Rule) -> float:
        return _per_token(backend, ids, rule, args.tokens, args.repeats)

    model = backend.model
    downs = find_down_projs(model)
    with tempfile.TemporaryDirectory() as tmp:
        s, h = _adapters(model, Path(tmp))
        d = downs[0].in_features
        router = save_router(FoldedGates(torch.randn(len(downs), 2, d) * 0.01,
                                         torch.zeros(len(downs), 2)), Path(tmp) / "r.safetensors")
        mix = load_mix(model, s, h, router)
        modes: dict[str, Callable[[], float]] = {
            "plain": lambda: run(PlainRule()),
            "two-stream floor": lambda: run(_TwoStreamPlain()),
            "portable fixed": lambda: run(ExpertsRule(FixedWeights(0.5, 0.5))),
            "portable agreement": lambda: run(ExpertsRule(AgreementWeights())),
        }
        run(PlainRule())  # warm-up: first calls pay one-off allocation costs
        times = {k: f() for k, f in modes.items()}
        with mix.attached():
            times["faithful folded"] = run(FaithfulRule(mix))
        if args.trained is not None:
            d = args.trained
            trained = load_mix(model, d / "safety", d / "helpfulness", d / "router.safetensors")
            with trained.attached():
                times["faithful, trained experts"] = run(FaithfulRule(trained))
    _report(times)


if __name__ == "__main__":
    main()
