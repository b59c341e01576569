"""Read a PEFT LoRA adapter's ``down_proj`` matrices, one (A, B) pair per decoder layer.

Only what MidPO uses is accepted (docs/methods.md §2.4): plain LoRA on ``down_proj``, no DoRA, no
per-layer rank or alpha patterns, no LoRA bias. Anything else is an :class:`AdapterError`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from guardrail.experts.errors import AdapterError, AdapterNotFoundError

_KEY = re.compile(r"layers\.(\d+)\.mlp\.down_proj\.lora_([AB])(?:\.[\w-]+)?\.weight$")
_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class LoraExpert:
    """One expert: ``A[i]`` ``[r, d_in]`` and ``B[i]`` ``[d_out, r]`` per layer, and its scaling."""

    name: str
    path: Path
    A: dict[int, torch.Tensor]
    B: dict[int, torch.Tensor]
    scaling: float  # PEFT's own: lora_alpha / r (or / sqrt(r) with rsLoRA)

    @property
    def rank(self) -> int:
        return int(next(iter(self.A.values())).shape[0])


def _read_config(path: Path, name: str) -> dict[str, Any]:
    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file():
        raise AdapterNotFoundError(
            f"{name} expert: {str(path)!r} has no adapter_config.json (not a PEFT adapter dir)"
        )
    try:
        cfg: dict[str, Any] = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{name} expert: {str(cfg_file)!r} is not valid JSON: {e}") from e
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{name} expert: peft_type must be LORA, got {cfg.get('peft_type')!r}")
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    if not any("down_proj" in t for t in targets):
        raise AdapterError(
            f"{name} expert: the adapter must target down_proj (MidPO experts live on the MLP "
            f"down-projection), its target_modules are {targets}"
        )
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise NotImplementedError(f"{name} expert: adapters with {key} are not supported yet")
    if cfg.get("use_dora"):
        raise NotImplementedError(f"{name} expert: DoRA adapters are not supported")
    if cfg.get("lora_bias"):
        raise NotImplementedError(f"{name} expert: adapters with lora_bias are not supported")
    return cfg


def _read_tensors(path: Path, name: str) -> dict[str, torch.Tensor]:
    for fname in _WEIGHT_FILES:
        f = path / fname
        if f.is_file():
            if fname.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(f))
            return dict(torch.load(str(f), map_location="cpu", weights_only=True))
    raise AdapterNotFoundError(
        f"{name} expert: {str(path)!r} holds no adapter weights ({' or '.join(_WEIGHT_FILES)})"
    )


def load_lora_expert(path: str | Path, name: str) -> LoraExpert:
    """Load the ``down_proj`` LoRA pairs of the PEFT adapter saved in directory ``path``."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise AdapterNotFoundError(f"{name} expert: no such adapter directory: {str(p)!r}")
    cfg = _read_config(p, name)
    A: dict[int, torch.Tensor] = {}
    B: dict[int, torch.Tensor] = {}
    for key, t in _read_tensors(p, name).items():
        m = _KEY.search(key)
        if m:
            (A if m.group(2) == "A" else B)[int(m.group(1))] = t
    if not A or set(A) != set(B):
        raise AdapterError(
            f"{name} expert: {str(p)!r} has no complete down_proj lora_A/lora_B pairs "
            f"(layers with A: {sorted(A)}, with B: {sorted(B)})"
        )
    r = int(cfg.get("r") or next(iter(A.values())).shape[0])
    alpha = float(cfg.get("lora_alpha", r))
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    return LoraExpert(name=name, path=p, A=A, B=B, scaling=scaling)
