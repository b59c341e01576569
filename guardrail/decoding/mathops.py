"""Small numpy helpers shared by the decoding rules (float32 in, float32 out).

The per-step helpers run on every generated token over the whole vocabulary, so they work in
place where they can; each does the same float32 operations, in the same order, as the
plain formula it names (tests compare them bit for bit).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray


def softmax(z: NDArray[np.floating]) -> NDArray[np.float32]:
    """Softmax over the last axis, in float32, stable for ``-inf`` entries."""
    z = np.asarray(z, dtype=np.float32)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _shifted_exp(z: NDArray[np.float32]) -> tuple[NDArray[np.float32], np.float32]:
    """``(exp(z - max z), its sum)``: softmax's numerator and denominator, one allocation."""
    e = np.subtract(z, z.max())
    np.exp(e, out=e)
    return e, e.sum()


def rank_of(z: NDArray[np.floating], token: int) -> int:
    """0-based rank of ``token`` in ``z`` sorted descending: O(V) count, no sort."""
    return int(np.count_nonzero(z > z[token]))


def plausibility_mask(p: NDArray[np.floating], beta: float) -> NDArray[np.bool_]:
    """Tokens to drop: those with ``p < beta * max p`` (adaptive plausibility constraint)."""
    return p < beta * p.max()


class Agreement(NamedTuple):
    """What AdaCD's switch reads from the two streams (docs/methods.md §1.3.2-4)."""

    p_o: NDArray[np.float32]  # softmax of the plain stream, for the plausibility mask
    agreement: float  # A = 1 / (rank of argmax z_s in z_o + 1)
    conf_o: float  # max p_o
    conf_s: float  # max p_s

    def refuse(self, lam: float) -> bool:
        """AdaCD's refusal mode: ``A >= λ`` and ``max p_o >= λ · max p_s``."""
        return self.agreement >= lam and self.conf_o >= lam * self.conf_s


def agreement(z_o: NDArray[np.float32], z_s: NDArray[np.float32]) -> Agreement:
    """The switch's inputs from plain logits ``z_o`` and safety logits ``z_s``.

    ``max p_s`` is ``1 / Σ exp(z_s − max z_s)``, the value softmax gives its top entry, so the
    safety stream's probabilities are never materialised.
    """
    z_o = np.asarray(z_o, dtype=np.float32)
    z_s = np.asarray(z_s, dtype=np.float32)
    p_o, s_o = _shifted_exp(z_o)
    p_o /= s_o
    _, s_s = _shifted_exp(z_s)
    return Agreement(
        p_o=p_o,
        agreement=1.0 / (rank_of(z_o, int(np.argmax(z_s))) + 1),
        conf_o=float(p_o.max()),
        conf_s=float(np.float32(1.0) / s_s),
    )


def contrast(
    z_o: NDArray[np.float32],
    z_s: NDArray[np.float32],
    p_o: NDArray[np.float32],
    *,
    alpha: float,
    towards_safety: bool,
    beta: float,
) -> NDArray[np.float32]:
    """``z_s ± α (z_s − z_o)`` with the plausibility mask from ``p_o`` (docs/methods.md §1.3.5-6).

    ``+`` (towards the safety stream) is AdaCD's refusal mode, ``−`` its comply mode; entries
    with ``p_o < β · max p_o`` become ``−inf``.
    """
    final = np.subtract(z_s, z_o, dtype=np.float32)
    final *= np.float32(alpha)
    if towards_safety:
        np.add(z_s, final, out=final)
    else:
        np.subtract(z_s, final, out=final)
    final[plausibility_mask(p_o, beta)] = -np.inf
    return final
