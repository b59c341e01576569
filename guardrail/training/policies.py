"""The policies `guardrail train` writes for what it trained (validated before they are written).

Paths in them are absolute, so a policy works from any directory; moving the output directory
means writing them again (re-running the command reuses what is trained and rewrites them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from guardrail.policy import Policy


def _write(policy: dict[str, Any], path: Path, header: str) -> Path:
    Policy.model_validate(policy)  # a policy we write must load
    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(policy, sort_keys=False, allow_unicode=True, width=100)
    path.write_text("".join(f"# {line}\n" for line in header.splitlines()) + body,
                    encoding="utf-8")
    return path


def _experts_policy(path: Path, *, name: str, description: str, model: dict[str, str],
                    safety: Path, helpfulness: Path, router: Path) -> Path:
    return _write({
        "name": name,
        "description": description,
        "model": model,
        "strategy": {
            "kind": "experts",
            "safety": {"kind": "lora", "path": str(safety.resolve())},
            "helpfulness": {"kind": "lora", "path": str(helpfulness.resolve())},
            "router": {"kind": "file", "path": str(router.resolve())},
        },
    }, path, "Written by `guardrail train experts` (docs/training.md).")


def faithful_policy(path: Path, *, name: str, base: Path, safety: Path, helpfulness: Path,
                    router: Path) -> Path:
    """Transformers, faithful mode: both LoRA experts mixed in every layer by the trained
    in-layer router, each adapter at its own PEFT scaling (as the router was trained)."""
    return _experts_policy(
        path, name=name, model={"backend": "transformers", "path": str(base.resolve())},
        description="Trained safety and helpfulness experts mixed inside every layer by the "
                    "trained router (faithful MidPO mode, transformers).",
        safety=safety, helpfulness=helpfulness, router=router)


def portable_policy(path: Path, *, name: str, gguf: Path, safety: Path, helpfulness: Path,
                    probe: Path) -> Path:
    """llama.cpp, portable mode: each GGUF LoRA expert on a context of its own, weighed per
    request by the trained prompt probe."""
    return _experts_policy(
        path, name=name, model={"backend": "llamacpp", "path": str(gguf.resolve())},
        description="Trained safety and helpfulness experts (GGUF LoRA streams) weighed by "
                    "the trained prompt probe (portable mode, llama.cpp).",
        safety=safety, helpfulness=helpfulness, router=probe)


def merged_policy(path: Path, *, name: str, backend: str, model: Path, lora: Path) -> Path:
    """Plain decoding of the model with the POROver adapter applied (`model.lora`)."""
    return _write({
        "name": name,
        "description": "Plain decoding with the POROver adapter applied to the model "
                       "(merged into the weights on transformers).",
        "model": {"backend": backend, "path": str(model.resolve()), "lora": str(lora.resolve())},
        "strategy": {"kind": "plain"},
    }, path, "Written by `guardrail train porover` (docs/training.md).")
