"""LoRA preference training with TRL's ``DPOTrainer``: SPE-DPO (eq. S) or plain DPO (eq. D).

TRL trains eq. D with the reference log-probabilities precomputed once (the frozen base: PEFT's
adapter switched off). SPE-DPO's margin enters through that precomputation: the chosen answer's
reference log-probability is raised by ``margin / β`` (:func:`~guardrail.training.losses.
margin_as_reference_shift`), which turns TRL's unchanged sigmoid loss into eq. S exactly. The
only side effect is on TRL's logged ``rewards/chosen`` and ``rewards/margins``, which then
include the shift (they are β·(log π_θ − shifted reference)).

Defaults are MidPO's (docs/methods.md §2.4): LoRA r 16, α 32, dropout 0 on ``down_proj``, β 0.1,
lr 1e-5 with a cosine schedule and 3% warm-up, weight decay 0.01, Adam betas (0.9, 0.95),
3 epochs, seed 42; float32 (this runs on CPUs). Batch 4 pairs.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from guardrail.errors import ConfigError
from guardrail.training.losses import margin_as_reference_shift
from guardrail.training.pairs import PreferencePair


@dataclass(frozen=True)
class LoraSettings:
    """LoRA and optimisation settings of one adapter (MidPO's by default)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("down_proj",)
    beta: float = 0.1
    learning_rate: float = 1e-5
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 4
    warmup_ratio: float = 0.03
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.95)
    max_length: int = 512
    seed: int = 42
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def recorded(self) -> dict[str, Any]:
        """The settings as an adapter's card records them (JSON values; ``extra`` left out):
        what a re-run compares to reuse a trained adapter."""
        return json.loads(json.dumps({k: v for k, v in asdict(self).items() if k != "extra"}))

    def check(self) -> None:
        """Clear errors for settings no trainer could use."""
        for name in ("r", "alpha", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, "
                                  f"got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.beta <= 0:
            raise ConfigError(f"--beta must be positive, got {self.beta}")
        if self.learning_rate <= 0:
            raise ConfigError(f"--lr must be positive, got {self.learning_rate}")
        if self.max_steps < 1 and self.epochs <= 0:
            raise ConfigError("give --epochs > 0 or --max-steps >= 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")


def pairs_digest(pairs: Sequence[PreferencePair]) -> str:
    """SHA-256 of the pairs as trained (provenance in the adapter's card)."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(p.model_dump_json().encode("utf-8") + b"\n")
    return h.hexdigest()


def _dataset(pairs: Sequence[PreferencePair], *, use_margin: bool) -> Any:
    from datasets import Dataset

    return Dataset.from_list([{
        "prompt": [{"role": "user", "content": p.prompt}],
        "chosen": [{"role": "assistant", "content": p.chosen}],
        "rejected": [{"role": "assistant", "content": p.rejected}],
        "margin": p.margin if use_margin else 0.0,
    } for p in pairs])


def _trainer_class() -> Any:
    from trl import DPOTrainer

    class SPEDPOTrainer(DPOTrainer):  # type: ignore[misc]
        """DPOTrainer whose precomputed chosen reference log-probs carry SPE-DPO's margin."""

        def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
            ds = super()._precompute_ref_logps(dataset, name, batch_size)
            beta = float(self.beta)
            return ds.map(lambda ex: {"ref_chosen_logps": ex["ref_chosen_logps"]
                                      + margin_as_reference_shift(ex["margin"], beta)})

    return SPEDPOTrainer


def train_lora(
    base: Path, pairs: Sequence[PreferencePair], out: Path, *, settings: LoraSettings,
    use_margin: bool, name: str, progress: bool = True,
) -> Path:
    """Train one LoRA adapter on ``pairs`` from the checkpoint ``base`` and save it (PEFT
    format) in ``out`` with ``training.json`` (settings, pairs digest, loss per logged step)."""
    settings.check()
    if not pairs:
        raise ConfigError(f"{name}: no preference pairs to train on (see `guardrail train "
                          "preferences` and its pairs.json for why pairs were dropped)")
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(base))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    args = DPOConfig(
        output_dir=str(out / "trainer"), beta=settings.beta,
        learning_rate=settings.learning_rate, lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_ratio, weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_betas[0], adam_beta2=settings.adam_betas[1],
        num_train_epochs=settings.epochs, max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size, max_length=settings.max_length,
        precompute_ref_log_probs=True, seed=settings.seed, report_to="none",
        logging_steps=1, save_strategy="no", disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False,
        **settings.extra,
    )
    lora = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=list(settings.target_modules), bias="none",
                      task_type="CAUSAL_LM")
    trainer = _trainer_class()(model=model, args=args, train_dataset=_dataset(
        pairs, use_margin=use_margin), processing_class=tok, peft_config=lora)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(str(out))
    card = {
        "adapter": name, "objective": "spe-dpo" if use_margin else "dpo", "base": str(base),
        "pairs": len(pairs), "pairs_sha256": pairs_digest(pairs), "seconds": round(seconds, 1),
        "settings": settings.recorded(),
        "log": [{k: v for k, v in row.items() if k in ("step", "loss", "rewards/accuracies",
                                                       "rewards/margins", "learning_rate")}
                for row in trainer.state.log_history if "loss" in row],
    }
    (out / "training.json").write_text(json.dumps(card, indent=2) + "\n")
    return out
