"""Portable expert mixing: experts are token streams, the router weighs their distributions.

MidPO (docs/methods.md §2) mixes a safety expert and a helpfulness expert inside every layer of
one model. Any backend can do the next best thing: run each expert as its own token stream (the
same model under another system prompt, or another model with the same tokenizer) and mix their
next-token distributions per token with the router's weights (α for safety, β for helpfulness):

    p(v) = (α · p_s(v) + β · p_h(v)) / (α + β)                                   (mixture, eq. M)

The final logits are ``log p`` (a valid logit row: softmax of it is ``p``). Like MidPO, α and β
are independent weights, not a softmax: they are normalised only inside eq. M.

Streams: 0 = safety expert, 1 = helpfulness expert, 2 = AdaCD's extreme-safety stream when AdaCD
runs on top (the mixture then plays AdaCD's plain stream O for its first K tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from guardrail.decoding.adacd import AdaCDRule, adacd_logits
from guardrail.decoding.mathops import rank_of
from guardrail.decoding.rules import StepInfo
from guardrail.errors import ConfigError


def _logaddexp(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    """``log(exp a + exp b)`` elementwise, ``-inf`` where both are: numpy's own ``logaddexp``
    is several times slower than these five vector passes."""
    out = np.maximum(a, b)
    with np.errstate(invalid="ignore"):
        d = np.abs(a - b)  # nan only where both are -inf
    np.negative(d, out=d)
    np.exp(d, out=d)
    np.log1p(d, out=d)
    np.nan_to_num(d, copy=False, nan=0.0)
    out += d
    return out


def mix_logits(logits: NDArray[np.floating], weights: NDArray[np.floating]) -> NDArray[np.float32]:
    """Eq. M: ``log Σ_i w_i p_i − log Σ_i w_i`` for expert logits ``[n, V]`` and weights ``[n]``.

    Each expert's log-probabilities plus ``log(w_i / Σ w)`` are summed in the log domain, so a
    weight of 0 removes an expert exactly and a single expert with weight 1 returns its own
    log-probabilities. The normalisers are summed in float64, the rest runs in float32.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != logits.shape[0]:
        raise ConfigError(f"mix_logits: {w.shape} weights for {logits.shape[0]} experts")
    if np.any(w < 0) or not np.any(w > 0):
        raise ConfigError(f"mix_logits: weights must be >= 0 and not all 0, got {w.tolist()}")
    z = np.asarray(logits, dtype=np.float32)
    shifted = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1, dtype=np.float64))
    with np.errstate(divide="ignore"):
        offsets = (np.log(w / w.sum()) - lse).astype(np.float32)
    out = shifted[0] + offsets[0]
    for i in range(1, z.shape[0]):
        out = _logaddexp(out, shifted[i] + offsets[i])
    return out


def agreement_weights(z_safety: NDArray[np.floating], z_help: NDArray[np.floating]) -> tuple[float, float]:
    """AdaCD's agreement signal as a router: ``α = A = 1 / (r + 1)``, ``β = 1 − A``.

    ``r`` is the rank of the safety expert's top token in the helpfulness expert's logits
    (docs/methods.md §1.3.2). When the helpful expert would say what the safety expert says, the
    safety expert leads; the more they disagree, the more the helpfulness expert leads.
    """
    a = 1.0 / (rank_of(np.asarray(z_help), int(np.argmax(z_safety))) + 1)
    return a, 1.0 - a


@runtime_checkable
class StreamRouter(Protocol):
    """Gives (α, β) for one step from the two experts' logits."""

    name: str

    def weights(
        self, z_safety: NDArray[np.float32], z_help: NDArray[np.float32], step: int
    ) -> tuple[float, float]: ...


@dataclass(frozen=True)
class FixedWeights:
    """Constant (α, β); (1, 0) is the safety expert alone, (0, 1) the helpfulness expert."""

    alpha: float
    beta: float
    name: str = "fixed"

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0 or self.alpha + self.beta <= 0:
            raise ConfigError(
                f"fixed router: alpha and beta must be >= 0 and not both 0, "
                f"got ({self.alpha}, {self.beta})"
            )

    def weights(
        self, z_safety: NDArray[np.float32], z_help: NDArray[np.float32], step: int
    ) -> tuple[float, float]:
        return self.alpha, self.beta


@dataclass(frozen=True)
class AgreementWeights:
    """Per-token weights from AdaCD's agreement signal (:func:`agreement_weights`)."""

    name: str = "agreement"

    def weights(
        self, z_safety: NDArray[np.float32], z_help: NDArray[np.float32], step: int
    ) -> tuple[float, float]:
        return agreement_weights(z_safety, z_help)


@dataclass(frozen=True)
class ExpertsRule:
    """Mix the safety (stream 0) and helpfulness (stream 1) experts; optional AdaCD on top.

    With ``adacd`` set, the mixture is AdaCD's plain stream O and stream 2 its safety stream S
    for the first ``adacd.steps`` tokens; stream 2 is freed afterwards.
    """

    router: StreamRouter = field(default_factory=lambda: FixedWeights(0.5, 0.5))
    adacd: AdaCDRule | None = None
    name: str = "experts"

    def _adacd_steps(self) -> int:
        return self.adacd.steps if self.adacd is not None else 0

    @property
    def n_streams(self) -> int:
        return 3 if self._adacd_steps() > 0 else 2

    def combine(
        self, logits: NDArray[np.float32], step: int
    ) -> tuple[NDArray[np.float32], StepInfo | None]:
        alpha, beta = self.router.weights(logits[0], logits[1], step)
        final = mix_logits(logits[:2], np.array([alpha, beta]))
        info: StepInfo = {"router": self.router.name, "alpha": float(alpha), "beta": float(beta)}
        if self.adacd is not None and step < self.adacd.steps:
            a = self.adacd
            final, ainfo = adacd_logits(final, logits[2], alpha=a.alpha, lam=a.lam, beta=a.beta)
            info.update(ainfo)
        return final, info

    def streams_needed(self, step: int) -> int:
        return 3 if step + 1 < self._adacd_steps() else 2


__all__ = [
    "AgreementWeights",
    "ExpertsRule",
    "FixedWeights",
    "StreamRouter",
    "agreement_weights",
    "mix_logits",
]
