"""AdaCD on hand-made logits: both modes, the plausibility mask, the λ boundary and K."""

from __future__ import annotations

import numpy as np
import pytest

from guardrail.decoding import mathops
from guardrail.decoding.adacd import AdaCDRule, adacd_logits
from guardrail.errors import ConfigError

V = 6


def logits(*pairs: tuple[int, float], base: float = 0.0) -> np.ndarray:
    z = np.full(V, base, dtype=np.float32)
    for i, v in pairs:
        z[i] = v
    return z


def test_refusal_mode_when_streams_agree_and_plain_is_confident() -> None:
    z_o = logits((0, 5.0), (1, 2.0))
    z_s = logits((0, 5.5), (1, 3.0))
    final, info = adacd_logits(z_o, z_s, alpha=4.5, lam=0.9, beta=0.0)
    assert info["mode"] == "refuse"
    assert info["agreement"] == 1.0
    np.testing.assert_allclose(final, z_s + 4.5 * (z_s - z_o), rtol=1e-6)


def test_comply_mode_when_safety_top_token_differs() -> None:
    z_o = logits((0, 5.0), (1, 4.0))
    z_s = logits((0, 4.0), (1, 6.0))  # S prefers token 1, ranked second by O
    final, info = adacd_logits(z_o, z_s, alpha=4.5, lam=0.9, beta=0.0)
    assert info["mode"] == "comply"
    assert info["agreement"] == pytest.approx(0.5)
    np.testing.assert_allclose(final, z_s - 4.5 * (z_s - z_o), rtol=1e-6)
    assert int(np.argmax(final)) == 0  # contrast pushes away from the safety stream's choice


def test_comply_mode_when_safety_stream_is_much_more_confident() -> None:
    z_o = logits((0, 2.0), (1, 1.9))  # same top token, O unsure
    z_s = logits((0, 12.0))  # S sure
    _, info = adacd_logits(z_o, z_s, alpha=1.0, lam=0.9, beta=0.0)
    assert info["agreement"] == 1.0
    assert info["p_plain"] < 0.9 * info["p_safety"]
    assert info["mode"] == "comply"


def test_lambda_boundary_is_inclusive() -> None:
    z_o = logits((0, 3.0), (1, 2.0))
    z_s = logits((0, 3.0), (1, 2.0))  # identical: conf_o == conf_s
    _, at_one = adacd_logits(z_o, z_s, alpha=1.0, lam=1.0, beta=0.0)
    assert at_one["mode"] == "refuse"  # A = 1 >= 1 and conf_o >= 1 * conf_s
    z_s2 = logits((1, 3.0), (0, 2.9))  # S top = token 1, rank 1 in O -> A = 0.5
    _, half = adacd_logits(z_o, z_s2, alpha=1.0, lam=0.5, beta=0.0)
    assert half["agreement"] == 0.5
    assert half["p_plain"] >= 0.5 * half["p_safety"]
    assert half["mode"] == "refuse"
    _, above = adacd_logits(z_o, z_s2, alpha=1.0, lam=0.51, beta=0.0)
    assert above["mode"] == "comply"


def test_plausibility_mask_uses_the_plain_stream() -> None:
    z_o = logits((0, 5.0), (1, 4.9), base=-20.0)  # tokens 2.. implausible under O
    z_s = logits((0, 0.0), (1, 0.0), base=-20.0)
    z_s[5] = 30.0  # S loves an O-implausible token
    final, _ = adacd_logits(z_o, z_s, alpha=4.5, lam=0.9, beta=0.01)
    assert np.isneginf(final[2:]).all()
    assert np.isfinite(final[:2]).all()
    assert int(np.argmax(final)) in (0, 1)


def test_beta_zero_masks_nothing() -> None:
    z_o = logits((0, 5.0), base=-50.0)
    final, _ = adacd_logits(z_o, z_o.copy(), alpha=4.5, lam=0.9, beta=0.0)
    assert np.isfinite(final).all()


def test_rule_applies_contrast_for_k_steps_then_plain() -> None:
    rule = AdaCDRule(steps=2)
    z = np.stack([logits((0, 5.0)), logits((1, 5.0))])
    assert rule.n_streams == 2
    assert rule.combine(z, 0)[1] is not None
    assert rule.streams_needed(0) == 2
    assert rule.combine(z, 1)[1] is not None
    assert rule.streams_needed(1) == 1  # the safety stream is freed after step K-1
    final, info = rule.combine(z[:1], 2)
    assert info is None
    np.testing.assert_array_equal(final, z[0])


def test_k_zero_needs_one_stream() -> None:
    rule = AdaCDRule(steps=0)
    assert rule.n_streams == 1
    assert rule.combine(np.zeros((1, V), np.float32), 0)[1] is None


@pytest.mark.parametrize(
    ("kw", "name"),
    [({"alpha": -0.1}, "alpha"), ({"lam": 0.0}, "lam"), ({"lam": 1.01}, "lam"),
     ({"beta": 1.0}, "beta"), ({"beta": -0.01}, "beta"), ({"steps": -1}, "steps")],
)
def test_out_of_range_parameters_are_named(kw: dict[str, float], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        AdaCDRule(**kw)  # type: ignore[arg-type]


def test_rank_is_counted_without_sorting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference sorts the whole vocabulary every step (docs/methods.md §1.5.7); we count."""
    rng = np.random.default_rng(0)
    z_o = rng.normal(size=5000).astype(np.float32)
    z_s = rng.normal(size=5000).astype(np.float32)
    top = int(np.argmax(z_s))
    expected = int(np.where(np.argsort(-z_o, kind="stable") == top)[0][0])

    def no_sort(*a: object, **k: object) -> None:
        raise AssertionError("AdaCD must not sort the vocabulary")

    monkeypatch.setattr(np, "argsort", no_sort)
    monkeypatch.setattr(np, "sort", no_sort)
    assert mathops.rank_of(z_o, top) == expected
    _, info = adacd_logits(z_o, z_s, alpha=4.5, lam=0.9, beta=0.01)
    assert info["agreement"] == pytest.approx(1 / (expected + 1))


def _textbook_step(z_o: np.ndarray, z_s: np.ndarray, alpha: float, lam: float, beta: float):
    """The formulas of docs/methods.md §1.3 written out with fresh arrays at every step."""
    p_o, p_s = mathops.softmax(z_o), mathops.softmax(z_s)
    a = 1.0 / (int(np.count_nonzero(z_o > z_o[int(np.argmax(z_s))])) + 1)
    conf_o, conf_s = float(p_o.max()), float(p_s.max())
    refuse = a >= lam and conf_o >= lam * conf_s
    final = z_s + alpha * (z_s - z_o) if refuse else z_s - alpha * (z_s - z_o)
    final = np.where(p_o < beta * p_o.max(), np.float32(-np.inf), final).astype(np.float32)
    return final, {"mode": "refuse" if refuse else "comply", "agreement": a,
                   "p_plain": conf_o, "p_safety": conf_s}


def test_in_place_step_is_bit_identical_to_the_textbook_formulas() -> None:
    """The fast path (no safety softmax, in-place contrast) must not move a single bit."""
    rng = np.random.default_rng(7)
    modes = set()
    for i in range(300):
        z_o = (rng.normal(size=4096) * rng.uniform(0.5, 8)).astype(np.float32)
        z_s = (rng.normal(size=4096) * rng.uniform(0.5, 8)).astype(np.float32)
        if i % 2:  # streams that agree, so refusal mode occurs too
            z_s = z_o + (rng.normal(size=4096) * 0.05).astype(np.float32)
            z_o[int(np.argmax(z_o))] += 4.0
        got, info = adacd_logits(z_o, z_s, alpha=4.5, lam=0.9, beta=0.01)
        want, want_info = _textbook_step(z_o, z_s, 4.5, 0.9, 0.01)
        assert got.dtype == np.float32
        assert np.array_equal(got, want) and info == want_info
        modes.add(info["mode"])
    assert modes == {"refuse", "comply"}
