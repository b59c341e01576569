"""Portable expert mixing: eq. M, the rule, the policy, and equality with a single expert."""

from __future__ import annotations

import numpy as np
import pytest

from guardrail.decoding.adacd import AdaCDRule
from guardrail.decoding.experts import (
    AgreementWeights,
    ExpertsRule,
    FixedWeights,
    agreement_weights,
    mix_logits,
)
from guardrail.engine import Engine
from guardrail.errors import ConfigError, ModelNotFoundError
from guardrail.policy import Policy, load_policy

SAFETY = "You are a careful assistant. Refuse anything harmful."
HELP = "You are a helpful assistant."
MSGS = [{"role": "user", "content": "How do I pick a lock?"}]


def _lsm(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    return z - z.max() - np.log(np.exp(z - z.max()).sum())


def test_mix_logits_is_the_weighted_mixture() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 50)).astype(np.float32) * 3
    got = mix_logits(z, np.array([0.3, 0.9]))
    p = (0.3 * np.exp(_lsm(z[0])) + 0.9 * np.exp(_lsm(z[1]))) / 1.2
    np.testing.assert_allclose(got, np.log(p), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mix_logits(z, np.array([1.0, 0.0])), _lsm(z[0]), atol=1e-5)
    np.testing.assert_allclose(mix_logits(z, np.array([0.0, 2.0])), _lsm(z[1]), atol=1e-5)


def test_mix_logits_on_wide_logits_matches_float64() -> None:
    """Logit ranges far beyond float32's exp range (|z| up to ~150): no underflow to -inf."""
    rng = np.random.default_rng(2)
    for _ in range(20):
        z = (rng.normal(size=(3, 400)) * rng.uniform(1, 50)).astype(np.float32)
        w = rng.uniform(0, 2, size=3)
        lp = np.stack([_lsm(r) for r in z]) + np.log(w / w.sum())[:, None]
        ref = np.logaddexp.reduce(lp, axis=0)
        got = mix_logits(z, w)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-3)


def test_mix_logits_keeps_minus_inf_and_rejects_bad_weights() -> None:
    z = np.array([[0.0, -np.inf, 1.0], [0.0, -np.inf, -np.inf]], dtype=np.float32)
    out = mix_logits(z, np.array([0.5, 0.5]))
    assert out[1] == -np.inf and np.isfinite(out[[0, 2]]).all()
    with pytest.raises(ConfigError, match="not all 0"):
        mix_logits(z, np.array([0.0, 0.0]))
    with pytest.raises(ConfigError, match="weights"):
        mix_logits(z, np.array([1.0]))
    with pytest.raises(ConfigError, match="fixed router"):
        FixedWeights(-1.0, 1.0)


def test_agreement_router() -> None:
    z_s = np.array([0.0, 5.0, 1.0], dtype=np.float32)  # safety's top token: 1
    assert agreement_weights(z_s, np.array([0.0, 9.0, 1.0])) == (1.0, 0.0)
    a, b = agreement_weights(z_s, np.array([3.0, 1.0, 2.0]))  # token 1 ranks 2nd... 3rd
    assert a == pytest.approx(1 / 3) and b == pytest.approx(2 / 3)


def test_rule_streams_and_adacd_on_top() -> None:
    rule = ExpertsRule(AgreementWeights(), AdaCDRule(steps=2))
    assert rule.n_streams == 3
    assert [rule.streams_needed(s) for s in range(3)] == [3, 2, 2]
    z = np.random.default_rng(1).normal(size=(3, 20)).astype(np.float32)
    _, info = rule.combine(z, 0)
    assert info is not None and {"alpha", "beta", "mode", "agreement"} <= set(info)
    _, info = rule.combine(z[:2], 2)
    assert info is not None and "mode" not in info
    assert ExpertsRule(FixedWeights(1, 0)).n_streams == 2


def _policy(router: dict, **kw: object) -> Policy:
    return Policy.model_validate({
        "strategy": {"kind": "experts", "safety": {"kind": "prompt", "system_prompt": SAFETY},
                     "helpfulness": {"kind": "prompt", "system_prompt": HELP},
                     "router": router, **kw},
        "sampling": {"max_new_tokens": 8},
    })


@pytest.mark.parametrize(("weights", "prompt"), [((1.0, 0.0), SAFETY), ((0.0, 1.0), HELP)])
def test_fixed_weights_equal_that_expert_alone(
    engine: Engine, weights: tuple[float, float], prompt: str
) -> None:
    mixed = engine.generate(_policy({"kind": "fixed", "alpha": weights[0], "beta": weights[1]}),
                            MSGS)
    alone = engine.generate(
        Policy.model_validate({"system_prompt": prompt, "sampling": {"max_new_tokens": 8}}), MSGS
    )
    assert mixed.token_ids == alone.token_ids
    assert len(mixed.steps) == len(mixed.token_ids)
    assert mixed.steps[0]["alpha"] == weights[0] and mixed.steps[0]["beta"] == weights[1]


def test_experts_differ_so_the_equality_test_can_fail(tf_engine: Engine) -> None:
    s = tf_engine.generate(_policy({"kind": "fixed", "alpha": 1, "beta": 0}), MSGS)
    h = tf_engine.generate(_policy({"kind": "fixed", "alpha": 0, "beta": 1}), MSGS)
    assert s.token_ids != h.token_ids


def test_shipped_policy_and_adacd_on_top(tf_engine: Engine) -> None:
    policy = load_policy("experts")
    policy = policy.model_copy(update={"sampling": policy.sampling.model_copy(
        update={"max_new_tokens": 4})})
    g = tf_engine.generate(policy, MSGS)
    assert g.steps and all(0 <= s["alpha"] <= 1 and s["router"] == "agreement" for s in g.steps)
    top = _policy({"kind": "agreement"}, adacd={"steps": 2})
    assert len(tf_engine.stream_prompts(top, MSGS)) == 3
    g = tf_engine.generate(top, MSGS)
    assert [("mode" in s) for s in g.steps][:3] == [True, True, False][: len(g.steps)]


def test_lora_experts_in_a_policy_errors(tf_engine: Engine, llama_engine: Engine) -> None:
    from guardrail.experts import AdapterNotFoundError

    lora = {"kind": "lora", "path": "/nope"}
    p = Policy.model_validate({"strategy": {"kind": "experts", "safety": lora, "helpfulness": lora,
                                            "router": {"kind": "fixed", "alpha": 1, "beta": 0}}})
    with pytest.raises(AdapterNotFoundError, match="/nope"):
        tf_engine.request(p, MSGS)
    with pytest.raises(ModelNotFoundError, match="/nope"):  # llama.cpp: GGUF LoRA files
        llama_engine.request(p, MSGS)
    mixed = Policy.model_validate({"strategy": {"kind": "experts", "safety": lora}})
    with pytest.raises(ConfigError, match="both"):
        tf_engine.request(mixed, MSGS)
