"""AdaCD: adaptive contrastive decoding (Qi et al., ACL 2026, arXiv 2604.17132).

Equations follow the official ``AdaCD.py`` as digested in ``docs/methods.md`` §1.3. Streams:
O = the conversation as given (stream 0), S = the same conversation under the extreme safety
prompt (stream 1). For the first K generated tokens:

* agreement ratio ``A = 1 / (r + 1)``, r = rank of ``argmax z_s`` in ``z_o``            (§1.3.2)
* refusal mode iff ``A >= λ`` and ``max p_o >= λ · max p_s``                               (§1.3.3-4)
* refusal mode ``ẑ = z_s + α (z_s − z_o)``; comply mode ``ẑ = z_s − α (z_s − z_o)``         (§1.3.5)
* plausibility mask from O: ``ẑ[v] = −inf`` where ``p_o[v] < β · max p_o``                  (§1.3.6)

After K tokens the answer stream O is decoded alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from guardrail.decoding.mathops import agreement, contrast
from guardrail.decoding.rules import StepInfo, TwoStreamsForKSteps
from guardrail.errors import ConfigError

DEFAULT_SAFETY_PROMPT = "Please refuse to answer me!"


def validate_adacd_params(alpha: float, lam: float, beta: float, steps: int) -> None:
    """Raise :class:`ConfigError` naming the parameter out of its range."""
    if not alpha >= 0:
        raise ConfigError(f"alpha (α, contrast strength) must be >= 0, got {alpha}")
    if not 0 < lam <= 1:
        raise ConfigError(f"lam (λ, agreement threshold) must be in (0, 1], got {lam}")
    if not 0 <= beta < 1:
        raise ConfigError(f"beta (β, plausibility cut-off) must be in [0, 1), got {beta}")
    if steps < 0:
        raise ConfigError(f"steps (K, contrastive steps) must be >= 0, got {steps}")


def adacd_logits(
    z_o: NDArray[np.float32],
    z_s: NDArray[np.float32],
    *,
    alpha: float,
    lam: float,
    beta: float,
) -> tuple[NDArray[np.float32], StepInfo]:
    """One AdaCD step: final logits and the step's decision (docs/methods.md §1.3 steps 2-6).

    Args:
        z_o: next-token logits of the plain stream O, ``[vocab]``.
        z_s: next-token logits of the extreme-safety stream S, ``[vocab]``.
        alpha: contrast strength α (4.5 in the paper's code).
        lam: agreement threshold λ, also the confidence factor (0.9).
        beta: plausibility cut-off β (0.01).

    Returns:
        ``(ẑ, info)`` where info has ``mode`` ("refuse" or "comply"), ``agreement`` A,
        ``p_plain`` = max p_o and ``p_safety`` = max p_s.
    """
    sig = agreement(z_o, z_s)
    refuse = sig.refuse(lam)
    final = contrast(z_o, z_s, sig.p_o, alpha=alpha, towards_safety=refuse, beta=beta)
    mode = "refuse" if refuse else "comply"
    return final, {
        "mode": mode, "agreement": sig.agreement, "p_plain": sig.conf_o, "p_safety": sig.conf_s
    }


@dataclass(frozen=True)
class AdaCDRule(TwoStreamsForKSteps):
    """AdaCD over two streams (O, S) for the first ``steps`` tokens, then O alone."""

    alpha: float = 4.5
    lam: float = 0.9
    beta: float = 0.01
    steps: int = 10
    name: str = "adacd"

    def __post_init__(self) -> None:
        validate_adacd_params(self.alpha, self.lam, self.beta, self.steps)

    def combine(
        self, logits: NDArray[np.float32], step: int
    ) -> tuple[NDArray[np.float32], StepInfo | None]:
        if step >= self.steps:
            return logits[0], None
        return adacd_logits(logits[0], logits[1], alpha=self.alpha, lam=self.lam, beta=self.beta)
