"""Pick the next token from final logits: greedy, or seeded temperature / top-k / top-p sampling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from guardrail.errors import ConfigError


@dataclass(frozen=True)
class SamplingParams:
    """How a token is drawn from the rule's final logits.

    Args:
        temperature: 0 means greedy (argmax); otherwise logits are divided by it before sampling.
        top_k: keep the k most likely tokens (0 = no limit).
        top_p: keep the smallest set of tokens whose probability reaches top_p (1.0 = no limit).
        seed: seed of the request's random generator (None = fresh entropy).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = no limit), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def rng(self) -> np.random.Generator:
        """A fresh generator for one request (same seed, same draws)."""
        return np.random.default_rng(self.seed)


def sample(logits: NDArray[np.floating], params: SamplingParams, rng: np.random.Generator) -> int:
    """Draw one token id from ``logits`` ``[vocab]`` (``-inf`` entries are never drawn)."""
    if params.greedy:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / params.temperature
    if params.top_k and params.top_k < z.size:
        kth = np.partition(z, -params.top_k)[-params.top_k]
        z = np.where(z < kth, -np.inf, z)
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    if params.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        cutoff = int(np.searchsorted(cum, params.top_p)) + 1  # smallest prefix reaching top_p
        keep = order[:cutoff]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(p.size, p=p))
