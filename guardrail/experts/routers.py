"""Per-layer routers of the faithful mode: (α, β) for each token from the down_proj input ``h``.

MidPO's router (docs/methods.md §2.3) scores each expert with an independent sigmoid. Its reference
scorer is three stacked linears with no nonlinearity between them, so it folds exactly into
``σ(wᵀh + b)`` with ``w = (W2 W1 W0)ᵀ`` and ``b = W2 (W1 b0 + b1) + b2`` (:func:`fold_stacked`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def fold_stacked(
    W0: torch.Tensor, b0: torch.Tensor, W1: torch.Tensor, b1: torch.Tensor,
    W2: torch.Tensor, b2: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold ``Linear(d→m) → Linear(m→d) → Linear(d→1)`` into ``(w [d], b [])`` (docs/methods.md §2.3)."""
    W0, b0, W1, b1, W2, b2 = (t.double() for t in (W0, b0, W1, b1, W2, b2))
    w = (W2 @ W1 @ W0).reshape(-1)
    b = (W2 @ (W1 @ b0 + b1) + b2).reshape(())
    return w.float(), b.float()


@dataclass
class FixedGates:
    """Constant (α, β) in every layer: (1, 0) is the safety expert alone, (0, 1) the helpful one."""

    alpha: float
    beta: float
    kind: str = "fixed"


@dataclass
class FoldedGates:
    """``α = σ(w_αᵀh + b_α)``, ``β = σ(w_βᵀh + b_β)`` per layer: ``w [L, 2, d]``, ``b [L, 2]``."""

    w: torch.Tensor
    b: torch.Tensor
    kind: str = "folded"

    @property
    def n_layers(self) -> int:
        return int(self.w.shape[0])

    @property
    def hidden(self) -> int:
        return int(self.w.shape[-1])


@dataclass
class StackedGates:
    """The reference's scorers, unfolded: per layer and expert the six tensors
    ``(W0 [m, d], b0 [m], W1 [d, m], b1 [d], W2 [1, d], b2 [1])``; ``layers[i] = (alpha, beta)``."""

    layers: list[tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]]
    kind: str = "stacked"

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden(self) -> int:
        return int(self.layers[0][0][0].shape[1])

    def gates(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """``[..., 2]`` = (α, β) computed through the three linears, as the reference does."""
        out = []
        for W0, b0, W1, b1, W2, b2 in self.layers[layer]:
            x = torch.nn.functional.linear(h, W0.to(h.dtype), b0.to(h.dtype))
            x = torch.nn.functional.linear(x, W1.to(h.dtype), b1.to(h.dtype))
            out.append(torch.nn.functional.linear(x, W2.to(h.dtype), b2.to(h.dtype)))
        return torch.sigmoid(torch.cat(out, dim=-1))

    def fold(self) -> FoldedGates:
        """The same function as :class:`FoldedGates` (equal up to rounding)."""
        ws, bs = [], []
        for alpha, beta in self.layers:
            (wa, ba), (wb, bb) = fold_stacked(*alpha), fold_stacked(*beta)
            ws.append(torch.stack([wa, wb]))
            bs.append(torch.stack([ba, bb]))
        return FoldedGates(torch.stack(ws), torch.stack(bs))


LayerRouter = FixedGates | FoldedGates | StackedGates
