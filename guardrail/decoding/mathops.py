"""Small numpy helpers shared by the decoding rules (float32 in, float32 out)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def softmax(z: NDArray[np.floating]) -> NDArray[np.float32]:
    """Softmax over the last axis, in float32, stable for ``-inf`` entries."""
    z = np.asarray(z, dtype=np.float32)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def rank_of(z: NDArray[np.floating], token: int) -> int:
    """0-based rank of ``token`` in ``z`` sorted descending: O(V) count, no sort."""
    return int(np.count_nonzero(z > z[token]))


def plausibility_mask(p: NDArray[np.floating], beta: float) -> NDArray[np.bool_]:
    """Tokens to drop: those with ``p < beta * max p`` (adaptive plausibility constraint)."""
    return p < beta * p.max()
