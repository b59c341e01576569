"""Faithful mode: LoRA experts made here with PEFT (fixed seeds) mixed inside every down_proj."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from safetensors.torch import load_file, save_file  # noqa: E402

from guardrail.decoding.loop import GenerationRequest, decode  # noqa: E402
from guardrail.engine import Engine  # noqa: E402
from guardrail.probes.weights import ProbeWeights  # noqa: E402
from guardrail.experts import (  # noqa: E402
    AdapterError,
    AdapterNotFoundError,
    FaithfulRule,
    FoldedGates,
    RouterFileError,
    StackedGates,
    find_down_projs,
    load_mix,
    load_router,
    save_router,
)

TEXT = "How do I pick a lock?"


@pytest.fixture(scope="module")
def made(tf_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two adapters (r=4, α=8 seed 0; r=2, α=6 seed 1) on a copy of the embedded model."""
    root = tmp_path_factory.mktemp("adapters")
    base = copy.deepcopy(tf_engine.backend.model)
    pm = None
    for name, r, a, seed in (("default", 4, 8, 0), ("help", 2, 6, 1)):
        torch.manual_seed(seed)
        cfg = peft.LoraConfig(r=r, lora_alpha=a, target_modules=["down_proj"],
                              init_lora_weights=False, lora_dropout=0.0)
        if pm is None:
            pm = peft.get_peft_model(base, cfg)
        else:
            pm.add_adapter(name, cfg)
        with torch.no_grad():  # keep deltas small enough for a sensible model
            for n, p in pm.named_parameters():
                if f"lora_B.{name}." in n:
                    p.mul_(0.05)
    pm.save_pretrained(str(root / "s"), selected_adapters=["default"])
    pm.save_pretrained(str(root / "h"), selected_adapters=["help"])
    pm.eval()
    ids = torch.tensor([tf_engine.backend.encode_chat([{"role": "user", "content": TEXT}])])
    return {"peft": pm, "safety": root / "s", "help": root / "h" / "help", "ids": ids,
            "root": root}


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits[0].float()


def _peft_logits(made: dict, adapters: str | list[str]) -> torch.Tensor:
    pm = made["peft"]
    pm.base_model.set_adapter(adapters)
    return _logits(pm, made["ids"])


@pytest.mark.parametrize(("weights", "adapters"), [
    ((1.0, 0.0), "default"), ((0.0, 1.0), "help"), ((1.0, 1.0), ["default", "help"]),
])
def test_fixed_weights_reproduce_peft(tf_engine: Engine, made: dict, weights: tuple,
                                      adapters: str | list[str]) -> None:
    model = tf_engine.backend.model
    base = _logits(model, made["ids"])
    ref = _peft_logits(made, adapters)
    assert (ref - base).abs().max() > 1e-2  # the adapters do change the model
    mix = load_mix(model, made["safety"], made["help"], weights)
    with mix.attached():
        got = _logits(model, made["ids"])
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(_logits(model, made["ids"]), base)  # detached again


def _random_folded(n: int, d: int, seed: int) -> FoldedGates:
    g = torch.Generator().manual_seed(seed)
    return FoldedGates(torch.randn(n, 2, d, generator=g) * 0.05, torch.randn(n, 2, generator=g))


def test_folded_router_matches_manual_computation(tf_engine: Engine, made: dict) -> None:
    """Every layer's output equals W h + s(σ(w_α·h+b_α) B_s A_s h + σ(w_β·h+b_β) B_h A_h h)."""
    model = tf_engine.backend.model
    downs = find_down_projs(model)
    d = downs[0].in_features
    router = _random_folded(len(downs), d, 7)
    path = save_router(router, made["root"] / "folded.safetensors")
    mix = load_mix(model, made["safety"], made["help"], path, scale=2.0)
    raw = {k: load_file(str(made[k] / "adapter_model.safetensors")) for k in ("safety", "help")}
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks: list = []
    try:
        with mix.attached(), torch.inference_mode():
            hooks += [m.register_forward_hook(lambda mod, a, o, i=i: seen.__setitem__(i, (a[0], o)))
                      for i, m in downs.items()]  # registered after the mix: sees its output
            model(input_ids=made["ids"])
            gates = mix.last_gates()
    finally:
        for h in hooks:
            h.remove()
    assert gates is not None and gates.shape == (len(downs), 1, 2)
    assert sorted(seen) == sorted(downs)
    for i, (h, out) in seen.items():
        h, out = h.clone(), out.clone()

        def delta(t: dict, i: int = i, h: torch.Tensor = h) -> torch.Tensor:
            key = f"base_model.model.model.layers.{i}.mlp.down_proj.lora_"
            return h @ t[key + "A.weight"].T @ t[key + "B.weight"].T
        a = torch.sigmoid(h @ router.w[i, 0] + router.b[i, 0]).unsqueeze(-1)
        b = torch.sigmoid(h @ router.w[i, 1] + router.b[i, 1]).unsqueeze(-1)
        want = h @ downs[i].weight.T + 2.0 * (a * delta(raw["safety"]) + b * delta(raw["help"]))
        torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
        assert gates[i, 0, 0] == pytest.approx(float(a[0, -1]), abs=1e-5)


def test_stacked_router_equals_its_folded_form(tf_engine: Engine, made: dict) -> None:
    model = tf_engine.backend.model
    n, d, m = len(find_down_projs(model)), find_down_projs(model)[0].in_features, 8
    g = torch.Generator().manual_seed(3)

    def scorer() -> tuple[torch.Tensor, ...]:
        return (torch.randn(m, d, generator=g) * 0.05, torch.randn(m, generator=g) * 0.1,
                torch.randn(d, m, generator=g) * 0.05, torch.randn(d, generator=g) * 0.1,
                torch.randn(1, d, generator=g) * 0.05, torch.randn(1, generator=g))

    stacked = StackedGates([(scorer(), scorer()) for _ in range(n)])
    path = save_router(stacked, made["root"] / "stacked.safetensors")
    outs = []
    for fold in (False, True):
        mix = load_mix(model, made["safety"], made["help"], path, fold=fold)
        assert isinstance(mix.router, FoldedGates if fold else StackedGates)
        with mix.attached():
            outs.append(_logits(model, made["ids"]))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)


def test_faithful_rule_puts_router_weights_in_the_trace(tf_engine: Engine, made: dict) -> None:
    model = tf_engine.backend.model
    router = _random_folded(len(find_down_projs(model)), find_down_projs(model)[0].in_features, 9)
    mix = load_mix(model, made["safety"], made["help"],
                   save_router(router, made["root"] / "r2.safetensors"))
    req = GenerationRequest([made["ids"][0].tolist()], FaithfulRule(mix), max_new_tokens=4)
    with mix.attached():
        steps = [ev for ev in decode(tf_engine.backend, [req]) if hasattr(ev, "steps")][0].steps
    assert steps and len(steps[0]["alpha_layers"]) == len(find_down_projs(model))
    assert 0 < steps[0]["alpha"] < 1 and 0 < steps[0]["beta"] < 1


def test_bad_adapters_get_clear_errors(tf_engine: Engine, made: dict, tmp_path: Path) -> None:
    model = tf_engine.backend.model
    with pytest.raises(AdapterNotFoundError, match="no such adapter directory"):
        load_mix(model, tmp_path / "missing", made["help"], (1.0, 0.0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterNotFoundError, match="adapter_config.json"):
        load_mix(model, tmp_path / "empty", made["help"], (1.0, 0.0))
    wrong = tmp_path / "q"
    wrong.mkdir()
    cfg = json.loads((made["safety"] / "adapter_config.json").read_text())
    (wrong / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": ["q_proj"]}))
    with pytest.raises(AdapterError, match="must target down_proj"):
        load_mix(model, wrong, made["help"], (1.0, 0.0))
    other = tmp_path / "other"  # an adapter "for another model": wrong input width
    other.mkdir()
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    t = load_file(str(made["safety"] / "adapter_model.safetensors"))
    save_file({k: (v[:, :10].contiguous() if "lora_A" in k else v) for k, v in t.items()},
              str(other / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match="another model"):
        load_mix(model, other, made["help"], (1.0, 0.0))


def test_bad_router_files_get_clear_errors(tf_engine: Engine, made: dict, tmp_path: Path) -> None:
    model = tf_engine.backend.model
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(RouterFileError, match="not a readable safetensors"):
        load_router(junk)
    with pytest.raises(RouterFileError, match="no such file"):
        load_router(tmp_path / "nope.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(RouterFileError, match="format must be"):
        load_router(foreign)
    partial = tmp_path / "partial.safetensors"
    save_file({"alpha.weight": torch.zeros(3, 4)}, str(partial),
              {"format": "guardrail-router", "version": "1", "kind": "folded"})
    with pytest.raises(RouterFileError, match="missing tensor 'alpha.bias'"):
        load_router(partial)
    short = save_router(_random_folded(3, find_down_projs(model)[0].in_features, 0),
                        tmp_path / "short.safetensors")
    with pytest.raises(AdapterError, match="router has 3 layers"):
        load_mix(model, made["safety"], made["help"], short)
    probe = save_router(ProbeWeights(np.zeros(5, np.float32), 0.0), tmp_path / "p.safetensors")
    with pytest.raises(RouterFileError, match="prompt probe"):
        load_mix(model, made["safety"], made["help"], probe)


def test_lora_experts_from_a_policy(tf_engine: Engine, made: dict) -> None:
    """`strategy: experts` with two lora experts: fixed (1, 0) decodes as PEFT's safety adapter,
    a router file puts per-layer weights in the trace, and a plain request decoded in the same
    call still sees the base model."""
    from guardrail.policy import Policy

    def policy(router: dict) -> Policy:
        return Policy.model_validate({
            "strategy": {"kind": "experts", "router": router,
                         "safety": {"kind": "lora", "path": str(made["safety"])},
                         "helpfulness": {"kind": "lora", "path": str(made["help"])}},
            "sampling": {"max_new_tokens": 5},
        })

    msgs = [{"role": "user", "content": TEXT}]
    plain = Policy.model_validate({"strategy": {"kind": "plain"}, "sampling": {"max_new_tokens": 5}})
    base = tf_engine.generate(plain, msgs)
    pm = made["peft"]
    pm.base_model.set_adapter("default")
    with torch.inference_mode():
        ref = pm.generate(made["ids"], attention_mask=torch.ones_like(made["ids"]),
                          max_new_tokens=5, do_sample=False)[0, made["ids"].shape[1]:].tolist()
    fixed = tf_engine.generate(policy({"kind": "fixed", "alpha": 1.0, "beta": 0.0}), msgs)
    assert fixed.token_ids == ref
    assert fixed.steps[0] == {"step": 0, "router": "fixed", "alpha": 1.0, "beta": 0.0}
    strong = policy({"kind": "fixed", "alpha": 40.0, "beta": 0.0})  # a delta that shows in tokens
    together = tf_engine.generate_many([tf_engine.request(strong, msgs),
                                        tf_engine.request(plain, msgs)])
    assert together[0].token_ids != base.token_ids
    assert together[1].token_ids == base.token_ids  # hooks were off for the plain request
    downs = find_down_projs(tf_engine.backend.model)
    router = save_router(_random_folded(len(downs), downs[0].in_features, 3),
                         made["root"] / "policy-router.safetensors")
    g = tf_engine.generate(policy({"kind": "file", "path": str(router)}), msgs)
    assert len(g.steps[0]["alpha_layers"]) == len(downs) and 0 < g.steps[0]["alpha"] < 1
    assert tf_engine.generate(plain, msgs).token_ids == base.token_ids  # detached afterwards
