"""SPE-DPO, DPO and the router prior on hand-made log-probabilities (guardrail/training/losses.py)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from guardrail.training.losses import (
    dpo_loss,
    margin_as_reference_shift,
    router_prior,
    spe_margin,
)

# summed answer log-probs of three pairs: policy chosen/rejected, reference chosen/rejected
PW = torch.tensor([-10.0, -20.0, -5.0])
PL = torch.tensor([-12.0, -18.0, -9.0])
RW = torch.tensor([-11.0, -19.0, -6.0])
RL = torch.tensor([-11.5, -19.5, -8.0])


def _by_hand(pw: float, pl: float, rw: float, rl: float, beta: float, m: float) -> float:
    z = beta * ((pw - rw) - (pl - rl)) - m
    return math.log1p(math.exp(-z))


def test_margin_zero_is_dpo() -> None:
    got = dpo_loss(PW, PL, RW, RL, beta=0.1)
    want = [_by_hand(*map(float, t), 0.1, 0.0) for t in zip(PW, PL, RW, RL)]
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    assert dpo_loss(PW, PL, RW, RL, beta=0.1, margin=0.0).tolist() == got.tolist()


def test_margin_makes_the_objective_harder() -> None:
    m = torch.tensor([0.0, 0.5, 2.0])
    plain = dpo_loss(PW, PL, RW, RL, beta=0.1)
    spe = dpo_loss(PW, PL, RW, RL, beta=0.1, margin=m)
    assert spe[0].item() == pytest.approx(plain[0].item())
    assert spe[1].item() > plain[1].item() and spe[2].item() > spe[1].item() - 1e-9
    want = [_by_hand(*map(float, t), 0.1, float(mi)) for t, mi in zip(zip(PW, PL, RW, RL), m)]
    assert spe.tolist() == pytest.approx(want, rel=1e-6)


def test_one_sided_margin_sign() -> None:
    """Safety: s = P(refusal) (= −cost up to scale), helpfulness: s = reward. A pair whose
    scores agree with its order gets the gap; one that disagrees gets no margin."""
    sw, sl = torch.tensor([0.9, 0.2, 0.5]), torch.tensor([0.1, 0.7, 0.5])
    assert spe_margin(sw, sl).tolist() == pytest.approx([0.8, 0.0, 0.0])


def test_reference_shift_trains_the_same_loss() -> None:
    """Raising the chosen reference log-prob by m/β turns plain DPO into SPE-DPO exactly (how
    the TRL trainer gets the margin)."""
    beta, m = 0.1, torch.tensor([0.3, 1.0, 0.0])
    shifted = RW + torch.tensor([margin_as_reference_shift(float(x), beta) for x in m])
    assert dpo_loss(PW, PL, shifted, RL, beta=beta).tolist() == pytest.approx(
        dpo_loss(PW, PL, RW, RL, beta=beta, margin=m).tolist(), rel=1e-6)
    with pytest.raises(ValueError, match="beta"):
        margin_as_reference_shift(1.0, 0.0)


def test_dpo_gradient_points_to_the_chosen_answer() -> None:
    pw = PW.clone().requires_grad_(True)
    pl = PL.clone().requires_grad_(True)
    dpo_loss(pw, pl, RW, RL, beta=0.1, margin=0.5).sum().backward()
    assert (pw.grad < 0).all() and (pl.grad > 0).all()  # descending raises y_w, lowers y_l


def test_router_prior() -> None:
    a = torch.tensor([[0.0, 0.5], [1.0, 0.5]])
    b = torch.tensor([[1.0, 0.5], [0.0, 1.0]])
    assert router_prior(a, b).item() == pytest.approx(0.5 + 0.375)
    assert router_prior(torch.zeros(3), torch.ones(3)).item() == 0.0
