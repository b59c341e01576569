"""`guardrail train experts` and `guardrail train porover`: from preference pairs to adapters,
routers and policies that use them (docs/training.md).

experts: SPE-DPO safety expert (the safety pairs) and helpfulness expert (the helpfulness
pairs) as LoRA adapters on ``down_proj``; MidPO's in-layer router on both kinds of pairs (the
faithful mode, transformers); the prompt probe on the pairs' prompts (the portable mode's
router, either backend); the adapters converted to GGUF LoRA files; ``policy-faithful.yaml``
(transformers) and ``policy-portable.yaml`` (llama.cpp, when the model is a GGUF).

porover: one LoRA trained with plain DPO on the pairs, and policies that decode plainly with it
applied (``model.lora``: merged into the weights on transformers).

A stage whose output is already there, trained from the same pairs with the same settings
(its card says so), is reused, so an interrupted run goes on from the last finished stage.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from guardrail.errors import ConfigError
from guardrail.training.checkpoint import Base, trainable_base
from guardrail.training.dpo import LoraSettings, pairs_digest, train_lora
from guardrail.training.pairs import PreferencePair, read_pairs
from guardrail.training.router import RouterSettings, train_router

TRAIN_EXTRA = "pip install 'guardrail-decoding[train]' (Python >= 3.11)"


def require_trainer() -> None:
    """A clear error when TRL (the ``train`` extra) cannot be imported."""
    if sys.version_info < (3, 11):
        raise ConfigError(f"guardrail train needs Python >= 3.11 (TRL's floor); this is "
                          f"{sys.version.split()[0]}")
    try:
        import peft  # noqa: F401
        import trl  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"guardrail train needs the train extra ({e.name} is missing): "
                          f"{TRAIN_EXTRA}") from None


@dataclass(frozen=True)
class Trained:
    """What a training command wrote."""

    out: Path
    files: dict[str, Path]
    reused: list[str]


def _reusable(card: Path, pairs: list[PreferencePair], settings: LoraSettings) -> bool:
    """Whether the adapter beside ``card`` was trained from these pairs with these settings."""
    if not card.is_file():
        return False
    try:
        meta = json.loads(card.read_text())
    except json.JSONDecodeError:
        return False
    return bool(meta.get("pairs_sha256") == pairs_digest(pairs)
                and settings.recorded() == meta.get("settings"))


def _lora(base: Base, pairs: list[PreferencePair], out: Path, settings: LoraSettings, *,
          name: str, margin: bool, reused: list[str], progress: bool) -> Path:
    if _reusable(out / "training.json", pairs, settings):
        reused.append(name)
        return out
    return train_lora(base.path, pairs, out, settings=settings, use_margin=margin, name=name,
                      progress=progress)


def _pairs_of(pairs: list[PreferencePair], expert: str, path: Path) -> list[PreferencePair]:
    got = [p for p in pairs if p.expert == expert]
    if not got:
        what = ("harmful prompts with both a refusal and a compliance among their answers"
                if expert == "safety" else
                "harmless prompts with both a refusal and an answer among their answers")
        raise ConfigError(f"--pairs {str(path)!r}: no {expert} pairs ({what}); over-generate "
                          "more answers (more --samples, or teachers such as safety_prompt, or refusal "
                          "for a model that never refuses) or add prompts")
    return got


def _convert(adapter: Path, base: Base, out: Path) -> Path:
    from guardrail.experts.lora_gguf import convert_peft_lora

    assert base.gguf is not None
    return convert_peft_lora(adapter, base.gguf, out)


def _probe(base: Base, pairs: list[PreferencePair], out: Path, *, l2: float) -> Path:
    """The portable router: the prompt probe on the pairs' prompts, read from the GGUF on
    llama.cpp when there is one (the file serves both backends)."""
    from guardrail.experts.router_file import save_router
    from guardrail.loading import get_engine
    from guardrail.policy import ModelConfig
    from guardrail.probes.prompt import train_probe

    seen: dict[str, bool] = {}
    for p in pairs:
        seen.setdefault(p.prompt, p.label == "unsafe")
    if len(set(seen.values())) < 2:
        raise ConfigError("router probe: the pairs' prompts must include harmful and harmless "
                          "ones")
    cfg = (ModelConfig(backend="llamacpp", path=str(base.gguf)) if base.gguf is not None
           else ModelConfig(backend="transformers", path=str(base.path)))
    engine = get_engine(cfg)
    probe, report = engine.run(lambda: train_probe(engine.backend, list(seen),
                                                   list(seen.values()), l2=l2))
    path = save_router(probe, out)
    path.with_suffix(".json").write_text(json.dumps(
        {"router": path.name, "kind": "probe", "prompts": len(seen), **report.as_dict()},
        indent=2) + "\n")
    return path


def train_experts(
    pairs_file: str | Path, out: str | Path, *, model: str | None = None,
    lora: LoraSettings = LoraSettings(), router: RouterSettings = RouterSettings(),
    probe_l2: float = 1e-2, name: str = "trained-experts", progress: bool = True,
) -> Trained:
    """The whole MidPO pipeline on ``pairs_file`` into ``out`` (see the module docstring)."""
    require_trainer()
    if probe_l2 < 0:
        raise ConfigError(f"--probe-l2 must be >= 0, got {probe_l2}")
    out_dir, path = Path(out), Path(pairs_file)
    pairs = read_pairs(path)
    safety, helpful = _pairs_of(pairs, "safety", path), _pairs_of(pairs, "helpfulness", path)
    base = trainable_base(model, out_dir)
    reused: list[str] = []
    files: dict[str, Path] = {"base": base.path}
    files["safety"] = _lora(base, safety, out_dir / "safety", lora, name="safety", margin=True,
                            reused=reused, progress=progress)
    files["helpfulness"] = _lora(base, helpful, out_dir / "helpfulness", lora,
                                 name="helpfulness", margin=True, reused=reused,
                                 progress=progress)
    files["router"] = train_router(base.path, files["safety"], files["helpfulness"], pairs,
                                   out_dir / "router.safetensors", settings=router,
                                   progress=progress)
    files["probe"] = _probe(base, pairs, out_dir / "probe.safetensors", l2=probe_l2)
    from guardrail.training.policies import faithful_policy, portable_policy

    files["policy-faithful"] = faithful_policy(
        out_dir / "policy-faithful.yaml", name=f"{name}-faithful", base=base.path,
        safety=files["safety"], helpfulness=files["helpfulness"], router=files["router"])
    if base.gguf is not None:
        files["safety-gguf"] = _convert(files["safety"], base, out_dir / "safety.gguf")
        files["helpfulness-gguf"] = _convert(files["helpfulness"], base,
                                             out_dir / "helpfulness.gguf")
        files["policy-portable"] = portable_policy(
            out_dir / "policy-portable.yaml", name=f"{name}-portable", gguf=base.gguf,
            safety=files["safety-gguf"], helpfulness=files["helpfulness-gguf"],
            probe=files["probe"])
    return Trained(out_dir, files, reused)


def train_porover(
    pairs_file: str | Path, out: str | Path, *, model: str | None = None,
    lora: LoraSettings = LoraSettings(), pairs: Literal["all", "helpfulness"] = "all",
    name: str = "porover", progress: bool = True,
) -> Trained:
    """POROver: one LoRA trained with plain DPO, and plain-decoding policies that apply it."""
    require_trainer()
    if pairs not in ("all", "helpfulness"):
        raise ConfigError(f"--pairs-from must be 'all' or 'helpfulness', got {pairs!r}")
    out_dir, path = Path(out), Path(pairs_file)
    chosen = read_pairs(path)
    if pairs == "helpfulness":
        chosen = _pairs_of(chosen, "helpfulness", path)
    elif not chosen:
        raise ConfigError(f"--pairs {str(path)!r}: no pairs")
    base = trainable_base(model, out_dir)
    reused: list[str] = []
    files: dict[str, Path] = {"base": base.path}
    files["adapter"] = _lora(base, chosen, out_dir / "adapter", lora, name="porover",
                             margin=False, reused=reused, progress=progress)
    from guardrail.training.policies import merged_policy

    files["policy-transformers"] = merged_policy(
        out_dir / "policy-transformers.yaml", name=f"{name}-transformers",
        backend="transformers", model=base.path, lora=files["adapter"])
    if base.gguf is not None:
        files["adapter-gguf"] = _convert(files["adapter"], base, out_dir / "adapter.gguf")
        files["policy-llamacpp"] = merged_policy(
            out_dir / "policy-llamacpp.yaml", name=f"{name}-llamacpp", backend="llamacpp",
            model=base.gguf, lora=files["adapter-gguf"])
    return Trained(out_dir, files, reused)
