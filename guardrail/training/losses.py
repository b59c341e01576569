"""The training objectives, each next to its equation (docs/methods.md §2.4, §2.5, §3).

Notation: for a prompt x with a preferred answer y_w and a dispreferred one y_l, Δ = log π_θ(y|x)
− log π_ref(y|x), each log-probability summed over the answer's tokens (no length
normalisation, as in MidPO's trainers). β is DPO's temperature (``scale_coeff`` = 0.1 in MidPO).

    DPO        L = −log σ( β (Δ_w − Δ_l) )                                        (eq. D)
    SPE-DPO    L = −log σ( β (Δ_w − Δ_l) − max(0, s_w − s_l) )                     (eq. S)
    router     L = DPO + mean|α| + mean|β_h − 1|                                   (eq. R)

In eq. S, ``s`` is the single preference's score of each answer, higher = better on that
preference: for the safety expert MidPO uses a cost model's score c (lower = safer) and writes
``+ min(0, c_w − c_l)``, which is eq. S with s = −c; for the helpfulness expert it writes
``− max(0, r_w − r_l)`` with a reward r, which is eq. S with s = r. The margin only ever makes
the objective harder (the implicit reward gap must exceed the score gap), and a pair whose
scores disagree with its order (s_w < s_l) gets no margin: plain DPO. In eq. R, α and β_h are
the router's per-token, per-layer weights of the safety and helpfulness experts; the prior pulls
α to 0 and β_h to 1 (MidPO: weight 1, averaged over every position and layer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def spe_margin(score_chosen: torch.Tensor, score_rejected: torch.Tensor) -> torch.Tensor:
    """The one-sided margin of eq. S: ``max(0, s_w − s_l)`` per pair."""
    return (score_chosen - score_rejected).clamp(min=0)


def dpo_loss(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, *, beta: float,
    margin: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Eq. S per pair (eq. D when ``margin`` is 0): ``−log σ(β(Δ_w − Δ_l) − margin)``.

    Arguments are summed answer log-probabilities (one value per pair); ``margin`` is
    :func:`spe_margin` of the pair's scores, already ≥ 0.
    """
    import torch.nn.functional as F

    z = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)) - margin
    return -F.logsigmoid(z)


def margin_as_reference_shift(margin: float, beta: float) -> float:
    """What to add to the reference log-probability of the chosen answer so that plain DPO
    (eq. D) computes SPE-DPO (eq. S): β(Δ_w − Δ_l) − m = β((log π_θ(y_w) − (log π_ref(y_w) +
    m/β)) − Δ_l). Exact, so a stock DPO trainer with precomputed reference log-probabilities
    trains eq. S unchanged."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    return margin / beta


def router_prior(alpha: torch.Tensor, beta_h: torch.Tensor) -> torch.Tensor:
    """Eq. R's prior: ``mean|α| + mean|β_h − 1|`` over every element given (positions, layers)."""
    return alpha.abs().mean() + (beta_h - 1).abs().mean()
