"""Logistic-regression probes on hidden states: ``P = σ(wᵀh + b)``, fitted by Newton's method.

Standardised features, L2-regularised, the standardisation folded back into (w, b) so a saved
probe reads raw hidden states. numpy only: a probe works on a llama.cpp-only install.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from guardrail.errors import ConfigError
from guardrail.probes.weights import ProbeWeights


def _sigmoid(x: NDArray[np.floating]) -> NDArray[np.float64]:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def probe_harm(probe: ProbeWeights, features: NDArray[np.floating]) -> NDArray[np.float64]:
    """``P(harmful) = σ(wᵀh + b)`` for features ``[n, d]``."""
    x = np.asarray(features, dtype=np.float64)
    if x.shape[-1] != probe.hidden:
        raise ConfigError(
            f"probe expects hidden states of width {probe.hidden}, the model gives "
            f"{x.shape[-1]} (probe trained on another model?)"
        )
    return _sigmoid(x @ probe.weight.astype(np.float64) + probe.bias)


def fit_logistic(x: NDArray[np.floating], y: NDArray[np.floating], *, l2: float = 1e-2,
                 iters: int = 50) -> tuple[NDArray[np.float32], float]:
    """L2-regularised logistic regression on ``x [n, d]``, ``y [n]`` in {0, 1}; raw-space (w, b).

    Minimises mean binary cross-entropy + ``l2 · |w|²`` (bias unpenalised) on standardised
    features with Newton's method."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    mu, sd = x.mean(0), np.maximum(x.std(0, ddof=1) if len(x) > 1 else x.std(0), 1e-6)
    z = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    n, d1 = z.shape
    reg = np.full(d1, 2.0 * l2)
    reg[-1] = 1e-9  # bias: no penalty (a tiny ridge keeps the Hessian invertible)
    theta = np.zeros(d1)
    for _ in range(iters):
        p = _sigmoid(z @ theta)
        grad = z.T @ (p - y) / n + reg * theta
        hess = (z.T * (p * (1 - p))) @ z / n + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    w_raw = theta[:-1] / sd
    return w_raw.astype(np.float32), float(theta[-1] - (w_raw * mu).sum())


@dataclass
class ProbeReport:
    """What :func:`train_probe` measured."""

    n_train: int
    n_heldout: int
    train_accuracy: float
    heldout_accuracy: float | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
