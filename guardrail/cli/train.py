"""``guardrail train``: preference pairs, SPE-DPO experts and router, POROver (docs/training.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from guardrail.errors import GuardrailError
from guardrail.training.dpo import LoraSettings

train_app = typer.Typer(help="Train experts, routers and adapters locally (docs/training.md).",
                        no_args_is_help=True)

_MODEL = typer.Option(None, "--model", help="GGUF file or Hugging Face checkpoint directory "
                      "(default: the embedded model); a GGUF is dequantised to float32 first.")
_THREADS = typer.Option(None, "--threads", help="Torch CPU threads (default: torch's own; on a "
                        "busy machine 1 is often faster).")
# The LoRA options of `train experts` and `train porover`, defaults from LoraSettings (MidPO's).
_LORA = LoraSettings()
_R = typer.Option(_LORA.r, "--r", help="LoRA rank.")
_ALPHA = typer.Option(_LORA.alpha, "--alpha", help="LoRA alpha (scaling alpha / r).")
_BETA = typer.Option(_LORA.beta, "--beta", help="DPO beta.")
_LR = typer.Option(_LORA.learning_rate, "--lr", help="Adapter learning rate (cosine schedule).")
_EPOCHS = typer.Option(_LORA.epochs, "--epochs", help="Adapter epochs.")
_MAX_STEPS = typer.Option(_LORA.max_steps, "--max-steps", help="Adapter steps (overrides "
                          "--epochs).")
_BATCH = typer.Option(_LORA.batch_size, "--batch-size", help="Pairs per step.")
_MAX_LENGTH = typer.Option(_LORA.max_length, "--max-length", help="Most tokens of prompt + "
                           "answer.")
_SEED = typer.Option(_LORA.seed, "--seed", help="Training seed.")


@train_app.callback()
def _group() -> None:
    """Train experts, routers and adapters locally (docs/training.md)."""


def _fail(e: Exception) -> typer.Exit:
    typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
    return typer.Exit(2)


def _lora_settings(**kw: object) -> LoraSettings:
    return LoraSettings(**{k: v for k, v in kw.items() if v is not None})  # type: ignore[arg-type]


def _show(trained: object) -> None:
    for key, path in trained.files.items():  # type: ignore[attr-defined]
        typer.echo(f"{key:<20} {path}")
    if trained.reused:  # type: ignore[attr-defined]
        typer.echo(f"reused (already trained from the same pairs and settings): "
                   f"{', '.join(trained.reused)}")  # type: ignore[attr-defined]


@train_app.command("preferences")
def preferences(
    out: Path = typer.Option(..., "--out", help="Run directory (answers/, pairs.jsonl, "
                             "pairs.json); re-run with the same directory to resume."),
    data: str = typer.Option("calibration", "--data", help="'calibration' (shipped: XSTest rows "
                             "with index % 3 != 0, JailbreakBench even rows, Vicuna-Bench), "
                             "'xstest', or a CSV/JSONL with prompt and label (safe/unsafe)."),
    teacher: Optional[list[str]] = typer.Option(
        None, "--teacher", "-t", help="Teacher policy (name or YAML path; built-in: safety_prompt, refusal); "
        "repeat. Default: plain, balanced, safety_prompt."),
    samples: int = typer.Option(2, "--samples", "-k", help="Answers per teacher and prompt "
                                "(seeds 0..K-1)."),
    temperature: float = typer.Option(0.7, "--temperature", help="Sampling temperature "
                                      "(0: one greedy answer per teacher)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="Answer length."),
    model: Optional[str] = typer.Option(None, "--model", help="Model the teachers run on "
                                        "(default: each teacher's; the first one's for all)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="llamacpp or transformers."),
    detector: str = typer.Option("probe", "--detector", help="Refusal detector: probe "
                                 "(P(refusal) sets the margins), string_match or judge."),
    probe_file: Optional[str] = typer.Option(None, "--probe-file", help="Refusal probe file "
                                             "(default: the shipped one)."),
    per_prompt: int = typer.Option(2, "--pairs-per-prompt", help="Most pairs per prompt."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use N prompts, taken in turn "
                                        "from each type."),
    batch_size: int = typer.Option(4, "--batch-size", help="Prompts decoded together."),
    threads: Optional[int] = typer.Option(None, "--threads", help="llama.cpp threads "  # noqa: UP007
                                          "(default: llama.cpp's own)."),
) -> None:
    """Over-generate answers with teacher policies, decide each with a refusal detector, and
    write preference pairs (harmful: refusal > compliance; harmless: answer > refusal)."""
    from guardrail.training.preferences import DEFAULT_TEACHERS, generate_preferences

    try:
        counts = generate_preferences(
            data, out, teachers=teacher or DEFAULT_TEACHERS, samples=samples,
            temperature=temperature, max_new_tokens=max_new_tokens, model=model,
            backend=backend, detector=detector, probe_file=probe_file, per_prompt=per_prompt,
            limit=limit, batch_size=batch_size, threads=threads)
    except GuardrailError as e:
        raise _fail(e) from e
    typer.echo(f"{counts.pairs} pairs ({counts.safety_pairs} safety, {counts.helpfulness_pairs} "
               f"helpfulness) from {counts.answers} answers to {counts.prompts} prompts; "
               f"{counts.prompts_without_pairs} prompts gave no pair; {out / 'pairs.jsonl'}")


@train_app.command("experts")
def experts(
    pairs: Path = typer.Option(..., "--pairs", help="pairs.jsonl from `train preferences`."),
    out: Path = typer.Option(..., "--out", help="Output directory (adapters, routers, policies)."),
    model: Optional[str] = _MODEL,
    r: int = _R,
    alpha: int = _ALPHA,
    beta: float = _BETA,
    lr: float = _LR,
    epochs: float = _EPOCHS,
    max_steps: int = _MAX_STEPS,
    batch_size: int = _BATCH,
    max_length: int = _MAX_LENGTH,
    seed: int = _SEED,
    router_lr: float = typer.Option(1e-3, "--router-lr", help="Router learning rate."),
    router_epochs: float = typer.Option(1.0, "--router-epochs", help="Router epochs."),
    router_steps: int = typer.Option(-1, "--router-steps", help="Router steps (overrides "
                                     "--router-epochs)."),
    prior_weight: float = typer.Option(1.0, "--prior-weight", help="Weight of the router's "
                                       "prior mean|a| + mean|b - 1|."),
    probe_l2: float = typer.Option(1e-2, "--probe-l2", help="L2 of the portable router probe."),
    threads: Optional[int] = _THREADS,
    name: str = typer.Option("trained-experts", "--name", help="Name of the written policies."),
) -> None:
    """SPE-DPO safety and helpfulness experts, MidPO's in-layer router, the portable probe
    router, GGUF conversions and policies that use them."""
    from guardrail.training.pipeline import train_experts
    from guardrail.training.router import RouterSettings

    try:
        trained = train_experts(
            pairs, out, model=model, name=name, probe_l2=probe_l2,
            lora=_lora_settings(r=r, alpha=alpha, beta=beta, learning_rate=lr, epochs=epochs,  # type: ignore[arg-type]
                                max_steps=max_steps, batch_size=batch_size,
                                max_length=max_length, seed=seed, threads=threads),
            router=RouterSettings(beta=beta, prior_weight=prior_weight, learning_rate=router_lr,
                                  epochs=router_epochs, max_steps=router_steps,
                                  max_length=max_length, seed=seed, threads=threads))
    except GuardrailError as e:
        raise _fail(e) from e
    _show(trained)


@train_app.command("porover")
def porover(
    pairs: Path = typer.Option(..., "--pairs", help="pairs.jsonl from `train preferences`."),
    out: Path = typer.Option(..., "--out", help="Output directory (adapter, policies)."),
    model: Optional[str] = _MODEL,
    pairs_from: str = typer.Option("all", "--pairs-from", help="'all' (answers over refusals "
                                   "of harmless prompts and refusals over compliance with "
                                   "harmful ones) or 'helpfulness' (the former only)."),
    r: int = _R,
    alpha: int = _ALPHA,
    beta: float = _BETA,
    lr: float = _LR,
    epochs: float = _EPOCHS,
    max_steps: int = _MAX_STEPS,
    batch_size: int = _BATCH,
    max_length: int = _MAX_LENGTH,
    seed: int = _SEED,
    threads: Optional[int] = _THREADS,
    name: str = typer.Option("porover", "--name", help="Name of the written policies."),
) -> None:
    """POROver: one LoRA by plain DPO on the pairs, for plain decoding with it applied."""
    from guardrail.training.pipeline import train_porover

    try:
        trained = train_porover(
            pairs, out, model=model, pairs=pairs_from, name=name,  # type: ignore[arg-type]
            lora=_lora_settings(r=r, alpha=alpha, beta=beta, learning_rate=lr, epochs=epochs,  # type: ignore[arg-type]
                                max_steps=max_steps, batch_size=batch_size,
                                max_length=max_length, seed=seed, threads=threads))
    except GuardrailError as e:
        raise _fail(e) from e
    _show(trained)


def register(app: typer.Typer) -> None:
    """Add ``guardrail train`` to the main command."""
    app.add_typer(train_app, name="train")
