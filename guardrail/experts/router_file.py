"""Router files: one safetensors file for every router kind, with a documented key layout.

Metadata (string values): ``format = "guardrail-router"``, ``version = "1"``, ``kind``, and
optionally ``model`` (the model it was trained on) and ``hidden`` (input width).

Tensors by kind (L layers, d = the router's input width):

* ``folded`` (faithful mode): ``alpha.weight [L, d]``, ``alpha.bias [L]``, ``beta.weight [L, d]``,
  ``beta.bias [L]``; layer i gives ``α = σ(alpha.weight[i]·h + alpha.bias[i])``.
* ``stacked`` (faithful mode, the reference's unfolded scorers): for each layer i and expert
  e in {alpha, beta}: ``layers.{i}.{e}.0.weight [m, d]``, ``.0.bias [m]``, ``.1.weight [d, m]``,
  ``.1.bias [d]``, ``.2.weight [1, d]``, ``.2.bias [1]`` (three linears, no activation).
* ``probe`` (portable mode): ``probe.weight [d]``, ``probe.bias [1]``; the probability that the
  prompt is harmful, from the last layer's hidden state at the prompt's last token.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from guardrail.errors import RouterFileError
from guardrail.probes.weights import (
    FORMAT,
    VERSION,
    ProbeWeights,
    probe_from_tensors,
    save_probe,
)

if TYPE_CHECKING:  # torch is needed for the per-layer routers only, not for a probe
    import torch

    from guardrail.experts.routers import FoldedGates, StackedGates

KINDS = ("folded", "stacked", "probe")


def save_router(router: Any, path: str | Path, **metadata: str) -> Path:
    """Write ``router`` to ``path`` (safetensors) with the layout above; returns the path."""
    if isinstance(router, ProbeWeights):
        return save_probe(router, path, **metadata)
    from safetensors.torch import save_file  # torch: per-layer routers only

    from guardrail.experts.routers import FoldedGates, StackedGates

    t: dict[str, torch.Tensor] = {}
    if isinstance(router, FoldedGates):
        for j, e in enumerate(("alpha", "beta")):
            t[f"{e}.weight"] = router.w[:, j, :]
            t[f"{e}.bias"] = router.b[:, j]
    elif isinstance(router, StackedGates):
        for i, pair in enumerate(router.layers):
            for e, tensors in zip(("alpha", "beta"), pair):
                for k, x in enumerate(tensors):
                    t[f"layers.{i}.{e}.{k // 2}.{'weight' if k % 2 == 0 else 'bias'}"] = x
    else:
        raise TypeError(f"save_router: not a router: {type(router).__name__}")
    meta = {"format": FORMAT, "version": VERSION, "kind": router.kind,
            "hidden": str(router.hidden), **metadata}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().contiguous().cpu() for k, v in t.items()}, str(out), meta)
    return out


def _need(t: dict[str, Any], key: str, where: str) -> Any:
    if key not in t:
        raise RouterFileError(f"{where}: missing tensor {key!r} (see docs/experts.md, key layout)")
    return t[key]


def _load_folded(t: dict[str, torch.Tensor], where: str) -> FoldedGates:
    import torch

    from guardrail.experts.routers import FoldedGates

    wa, ba = _need(t, "alpha.weight", where), _need(t, "alpha.bias", where)
    wb, bb = _need(t, "beta.weight", where), _need(t, "beta.bias", where)
    if wa.ndim != 2 or wa.shape != wb.shape or ba.shape != (wa.shape[0],) or bb.shape != ba.shape:
        raise RouterFileError(
            f"{where}: folded router needs alpha/beta.weight [L, d] and .bias [L], got "
            f"{tuple(wa.shape)}, {tuple(ba.shape)}, {tuple(wb.shape)}, {tuple(bb.shape)}"
        )
    return FoldedGates(torch.stack([wa, wb], dim=1), torch.stack([ba, bb], dim=1))


def _load_stacked(t: dict[str, torch.Tensor], where: str) -> StackedGates:
    from guardrail.experts.routers import StackedGates

    idx = sorted({int(m.group(1)) for k in t if (m := re.match(r"layers\.(\d+)\.", k))})
    if not idx or idx != list(range(len(idx))):
        raise RouterFileError(f"{where}: stacked router needs layers.0 .. layers.{{L-1}}, got {idx}")
    layers = []
    for i in idx:
        pair = []
        for e in ("alpha", "beta"):
            ts = tuple(
                _need(t, f"layers.{i}.{e}.{k}.{p}", where) for k in range(3)
                for p in ("weight", "bias")
            )
            W0, _, W1, _, W2, _ = ts
            if not (W0.shape[1] == W1.shape[0] == W2.shape[1] and W1.shape[1] == W0.shape[0]
                    and W2.shape[0] == 1):
                raise RouterFileError(
                    f"{where}: layers.{i}.{e}: shapes {[tuple(x.shape) for x in ts]} do not chain "
                    "as Linear(d→m) → Linear(m→d) → Linear(d→1)"
                )
            pair.append(ts)
        layers.append((pair[0], pair[1]))
    return StackedGates(layers)


def _read(p: Path, where: str, framework: str) -> tuple[dict[str, str], dict[str, Any]]:
    try:
        with safe_open(str(p), framework=framework) as f:
            meta = dict(f.metadata() or {})
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
    except (SafetensorError, OSError, ValueError) as e:
        raise RouterFileError(f"{where}: not a readable safetensors file ({e})") from e
    return meta, t


def load_router(path: str | Path) -> Any:
    """Read a router file; every problem is a :class:`RouterFileError` naming the file.

    A probe is read with numpy; the per-layer routers (faithful mode) need torch."""
    p = Path(path).expanduser()
    where = f"router file {str(p)!r}"
    if not p.is_file():
        raise RouterFileError(f"{where}: no such file")
    meta, t = _read(p, where, "np")
    if meta.get("format") != FORMAT:
        raise RouterFileError(
            f"{where}: metadata format must be {FORMAT!r}, got {meta.get('format')!r} "
            "(was it written by guardrail.experts.save_router or `guardrail router train`?)"
        )
    if meta.get("version") != VERSION:
        raise RouterFileError(f"{where}: version {meta.get('version')!r} is not supported ({VERSION})")
    kind = meta.get("kind")
    if kind == "probe":
        return probe_from_tensors(t, meta, where)
    if kind in ("folded", "stacked"):
        _, t = _read(p, where, "pt")
        return _load_folded(t, where) if kind == "folded" else _load_stacked(t, where)
    raise RouterFileError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
