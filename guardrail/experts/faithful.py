"""Faithful MidPO mode (transformers): the experts' LoRA deltas mixed inside every MLP.

A forward hook on each layer's ``mlp.down_proj`` (input ``h``, output ``W h``) applies
docs/methods.md §2.3 / §2.10:

    out = W h + s · (α(h) · B_s A_s h + β(h) · B_h A_h h)                          (eq. F)

:func:`mix_delta` is eq. F as written; the hook computes the same thing fused into two matmuls
per layer (``[A_s; A_h; w_α; w_β] h`` then ``[B_s B_h]``). ``s`` is either a number for both
experts (2 = the reference's inference path, 1 = its router-training path) or ``None``: each
adapter's own PEFT scaling ``lora_alpha / r``, with which (α, β) = (1, 0) is exactly PEFT's
safety adapter.
"""

from __future__ import annotations

import re
from pathlib import Path
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from guardrail.decoding.rules import StepInfo
from guardrail.experts.errors import AdapterError, RouterFileError
from guardrail.experts.lora import LoraExpert
from guardrail.experts.routers import FixedGates, FoldedGates, LayerRouter, StackedGates
from guardrail.experts.lora import load_lora_expert
from guardrail.experts.router_file import load_router
from guardrail.probes.weights import ProbeWeights

_DOWN = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.down_proj$")


def mix_delta(
    out: torch.Tensor, h: torch.Tensor,
    A_s: torch.Tensor, B_s: torch.Tensor, A_h: torch.Tensor, B_h: torch.Tensor,
    alpha: torch.Tensor | float, beta: torch.Tensor | float, s_s: float, s_h: float,
) -> torch.Tensor:
    """Eq. F: ``out + α·s_s·B_s A_s h + β·s_h·B_h A_h h`` (s_s = s_h = s in the paper's form)."""
    return out + alpha * s_s * (h @ A_s.T @ B_s.T) + beta * s_h * (h @ A_h.T @ B_h.T)


def find_down_projs(model: torch.nn.Module) -> dict[int, torch.nn.Linear]:
    """Every decoder layer's ``mlp.down_proj``, by layer index."""
    found = {int(m.group(1)): mod for name, mod in model.named_modules()
             if (m := _DOWN.search(name)) and isinstance(mod, torch.nn.Linear)}
    if not found:
        raise AdapterError(
            f"{type(model).__name__}: no layers.<i>.mlp.down_proj Linear modules; the faithful "
            "mode needs a LLaMA-style MLP (gate/up/down projections)"
        )
    return found


def lora_pair(e: LoraExpert, i: int, mod: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert ``e``'s ``(A, B)`` for layer ``i``'s down projection ``mod``: a zero delta of the
    expert's rank where it does not adapt that layer; an :class:`AdapterError` when its shapes
    are not the layer's (an adapter made for another model)."""
    if i not in e.A:
        return (torch.zeros(e.rank, mod.in_features), torch.zeros(mod.out_features, e.rank))
    A, B = e.A[i], e.B[i]
    if A.shape[1] != mod.in_features or B.shape[0] != mod.out_features:
        raise AdapterError(
            f"{e.name} expert ({str(e.path)!r}): layer {i} down_proj is "
            f"{mod.in_features}→{mod.out_features} but the adapter has lora_A "
            f"{tuple(A.shape)} and lora_B {tuple(B.shape)}: adapter made for another model?"
        )
    return A, B


@dataclass
class _Layer:
    M: torch.Tensor        # [2r (+2), d_in]: A_s, A_h (and folded router rows w_α, w_β)
    Bcat: torch.Tensor     # [d_out, 2r]: B_s, B_h
    bias: torch.Tensor | None  # [2] router biases (folded)
    r_s: int
    r_h: int


@dataclass
class ExpertMix:
    """Two LoRA experts and a router, hooked into a loaded model (see :meth:`attach`).

    While attached, the model computes eq. F in every layer. ``last_gates()`` holds (α, β) of the
    last position of each batch row in each layer after every forward.
    """

    model: torch.nn.Module
    safety: LoraExpert
    helpfulness: LoraExpert
    router: LayerRouter
    scale: float | None = None
    _layers: dict[int, _Layer] = field(default_factory=dict, init=False)
    _gates: dict[int, torch.Tensor] = field(default_factory=dict, init=False)
    _handles: list[Any] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        downs = find_down_projs(self.model)
        n = max(downs) + 1
        for e in (self.safety, self.helpfulness):
            extra = sorted(set(e.A) - set(downs))
            if extra:
                raise AdapterError(f"{e.name} expert: layers {extra} do not exist in the model "
                                   f"({n} layers): adapter made for another model?")
        if isinstance(self.router, (FoldedGates, StackedGates)) and self.router.n_layers != n:
            raise AdapterError(f"router has {self.router.n_layers} layers, the model has {n}")
        for i, mod in downs.items():
            self._layers[i] = self._prepare(i, mod)

    def _prepare(self, i: int, mod: torch.nn.Linear) -> _Layer:
        w = mod.weight
        (A_s, B_s), (A_h, B_h) = lora_pair(self.safety, i, mod), lora_pair(self.helpfulness, i, mod)
        rows, bias = [A_s, A_h], None
        if isinstance(self.router, FoldedGates):
            if self.router.hidden != mod.in_features:
                raise AdapterError(f"router input width {self.router.hidden} != down_proj input "
                                   f"{mod.in_features} (router trained on another model?)")
            rows.append(self.router.w[i])
            bias = self.router.b[i].to(w.device, w.dtype)
        elif isinstance(self.router, StackedGates) and self.router.hidden != mod.in_features:
            raise AdapterError(f"router input width {self.router.hidden} != down_proj input "
                               f"{mod.in_features} (router trained on another model?)")
        M = torch.cat(rows).to(w.device, w.dtype)
        Bcat = torch.cat([B_s, B_h], dim=1).to(w.device, w.dtype)
        return _Layer(M, Bcat, bias, A_s.shape[0], A_h.shape[0])

    def _scales(self) -> tuple[float, float]:
        if self.scale is None:
            return self.safety.scaling, self.helpfulness.scaling
        return self.scale, self.scale

    def _hook(self, i: int) -> Any:
        L = self._layers[i]
        s_s, s_h = self._scales()
        r = L.r_s + L.r_h
        router = self.router

        def hook(module: torch.nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            h = args[0]
            u = h @ L.M.T
            if isinstance(router, FixedGates):
                a, b = router.alpha * s_s, router.beta * s_h
                v = torch.cat([u[..., :L.r_s] * a, u[..., L.r_s:r] * b], dim=-1)
            else:
                g = (torch.sigmoid(u[..., r:] + L.bias) if L.bias is not None
                     else router.gates(i, h))  # type: ignore[union-attr]
                self._gates[i] = g[:, -1, :] if g.ndim == 3 else g
                v = torch.cat([u[..., :L.r_s] * (g[..., :1] * s_s),
                               u[..., L.r_s:r] * (g[..., 1:2] * s_h)], dim=-1)
            return out + v @ L.Bcat.T

        return hook

    def attach(self) -> ExpertMix:
        """Install the hooks (idempotent)."""
        if not self._handles:
            downs = find_down_projs(self.model)
            self._handles = [downs[i].register_forward_hook(self._hook(i)) for i in sorted(downs)]
        return self

    def detach(self) -> None:
        """Remove the hooks: the model is the base model again."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._gates.clear()

    @contextmanager
    def attached(self) -> Iterator[ExpertMix]:
        """``with mix.attached(): ...`` runs the model as the expert mix, then restores it."""
        self.attach()
        try:
            yield self
        finally:
            self.detach()

    def last_gates(self) -> NDArray[np.float32] | None:
        """(α, β) of the last forward: ``[n_layers, batch, 2]``; None with fixed weights."""
        if isinstance(self.router, FixedGates):
            return None
        if not self._gates:
            return None
        return torch.stack([self._gates[i] for i in sorted(self._gates)]).float().cpu().numpy()


@dataclass
class FaithfulRule:
    """The mixed model's own logits (one stream), with the router's weights in the trace.

    Meant for one request per decode call: the recorded (α, β) are those of batch row ``row``.
    Step info: ``alpha``/``beta`` = mean over layers, ``alpha_layers``/``beta_layers`` per layer.
    """

    mix: ExpertMix
    row: int = 0
    name: str = "experts-faithful"

    @property
    def n_streams(self) -> int:
        return 1

    def combine(
        self, logits: NDArray[np.float32], step: int
    ) -> tuple[NDArray[np.float32], StepInfo | None]:
        g = self.mix.last_gates()
        if g is None:
            r = self.mix.router
            assert isinstance(r, FixedGates)
            return logits[0], {"router": "fixed", "alpha": r.alpha, "beta": r.beta}
        a, b = g[:, self.row, 0], g[:, self.row, 1]
        return logits[0], {
            "router": self.mix.router.kind, "alpha": float(a.mean()), "beta": float(b.mean()),
            "alpha_layers": a.tolist(), "beta_layers": b.tolist(),
        }

    def streams_needed(self, step: int) -> int:
        return 1

    def attached(self) -> AbstractContextManager[ExpertMix]:
        """The model runs as the mix while this context is open; the engine decodes a request
        with this rule alone inside it (the hooks act on every row of a batch)."""
        return self.mix.attached()


def load_mix(
    model: torch.nn.Module,
    safety: str | Path,
    helpfulness: str | Path,
    router: str | Path | tuple[float, float],
    *,
    scale: float | None = None,
    fold: bool = True,
) -> ExpertMix:
    """The faithful expert mix for ``model`` (not attached yet: use ``with mix.attached():``).

    Args:
        safety, helpfulness: PEFT LoRA adapter directories (targeting ``down_proj``).
        router: a router file (``folded`` or ``stacked``) or fixed ``(α, β)``.
        scale: ``s`` of eq. F for both experts; None = each adapter's own ``lora_alpha / r``.
        fold: run a ``stacked`` router in its folded form (same function, far cheaper).
    """

    if isinstance(router, tuple):
        gates: LayerRouter = FixedGates(*router)
    else:
        loaded = load_router(router)
        if isinstance(loaded, ProbeWeights):
            raise RouterFileError(
                f"router file {str(router)!r} is a prompt probe (portable mode); the faithful "
                "mode needs a per-layer router (kind folded or stacked)"
            )
        gates = loaded.fold() if fold and isinstance(loaded, StackedGates) else loaded
    return ExpertMix(
        model, load_lora_expert(safety, "safety"), load_lora_expert(helpfulness, "helpfulness"),
        gates, scale,
    )
