"""A probe's weights and its file: ``P = σ(weight·h + bias)``, stored as a router file of kind
``probe`` (the layout is documented in :mod:`guardrail.experts.router_file`). numpy only."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from safetensors.numpy import save_file

from guardrail.errors import RouterFileError

FORMAT = "guardrail-router"
VERSION = "1"


@dataclass
class ProbeWeights:
    """Logistic-regression probe: ``P = σ(weight·h + bias)`` (numpy: no torch needed)."""

    weight: NDArray[np.float32]
    bias: float
    metadata: dict[str, str] = field(default_factory=dict)
    kind: str = "probe"

    @property
    def hidden(self) -> int:
        return int(self.weight.shape[0])


def save_probe(probe: ProbeWeights, path: str | Path, **metadata: str) -> Path:
    """Write ``probe`` as a router file of kind ``probe``; returns the path."""
    meta = {**probe.metadata, **metadata, "format": FORMAT, "version": VERSION, "kind": "probe",
            "hidden": str(probe.hidden)}
    t = {"probe.weight": np.ascontiguousarray(probe.weight, dtype=np.float32).reshape(-1),
         "probe.bias": np.array([probe.bias], dtype=np.float32)}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(t, str(out), meta)
    return out


def probe_from_tensors(t: dict[str, Any], meta: dict[str, str], where: str) -> ProbeWeights:
    """The probe in a router file's tensors (``probe.weight [d]``, ``probe.bias [1]``)."""
    for key in ("probe.weight", "probe.bias"):
        if key not in t:
            raise RouterFileError(f"{where}: missing tensor {key!r} (see docs/experts.md, key "
                                  "layout)")
    w, b = t["probe.weight"], t["probe.bias"]
    if w.ndim != 1 or b.size != 1:
        raise RouterFileError(f"{where}: probe.weight must be [d] and probe.bias [1]")
    return ProbeWeights(w.astype(np.float32), float(b.reshape(())), meta)


__all__ = ["FORMAT", "VERSION", "ProbeWeights", "probe_from_tensors", "save_probe"]
