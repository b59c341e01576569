"""``guardrail router train``: fit the prompt-probe router and write it with a JSON card."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import typer

from guardrail.cli.args import check_backend
from guardrail.errors import GuardrailError
from guardrail.experts.data import read_labelled, sha256_file
from guardrail.experts.router_file import save_router
from guardrail.loading import get_engine
from guardrail.policy import ModelConfig
from guardrail.probes.prompt import train_probe

router_app = typer.Typer(help="Expert routers (docs/experts.md).", no_args_is_help=True)


@router_app.callback()
def _group() -> None:
    """Expert routers (docs/experts.md)."""


@router_app.command("train")
def train(
    data: Path = typer.Option(..., "--data", help="Labelled prompts (CSV or JSONL: prompt, label)."),
    out: Path = typer.Option(..., "--out", help="Router file to write (.safetensors)."),
    model: str = typer.Option(None, "--model", help="Model path (default: the embedded model)."),
    limit: int = typer.Option(0, "--limit", help="Use at most this many rows (0 = all), "
                              "sampled with --seed, both classes kept."),
    heldout: float = typer.Option(0.25, "--heldout", help="Fraction held out for accuracy."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and the sampling."),
    backend: str = typer.Option(
        "transformers", "--backend", help="llamacpp or transformers (the probe file serves both)."
    ),
    l2: float = typer.Option(1e-2, "--l2", min=0, help="L2 penalty of the logistic regression."),
    threads: int = typer.Option(None, "--threads", help="llama.cpp threads (default: its own)."),
    feature: str = typer.Option(
        "last_layer_last_token_and_user_mean", "--feature",
        help="Probe feature: last_layer_last_token_and_user_mean (last prompt token next to the "
        "user message's mean) or last_layer_last_prompt_token.",
    ),
) -> None:
    """Train the probe (harmful → safety expert, harmless → helpfulness expert) on CPU."""

    check_backend(backend)
    try:
        prompts, harmful = read_labelled(data)
        if limit and limit < len(prompts):
            idx = sorted(random.Random(seed).sample(range(len(prompts)), limit))
            prompts, harmful = [prompts[i] for i in idx], [harmful[i] for i in idx]
        engine = get_engine(ModelConfig(backend=backend, path=model, n_threads=threads))
        probe, report = train_probe(
            engine.backend, prompts, harmful, heldout=heldout, seed=seed, l2=l2, feature=feature
        )
        path = save_router(probe, out)
    except GuardrailError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    card = {
        "router": path.name, "kind": "probe", "model": engine.backend.model_name,
        "model_path": model, "data": str(data), "data_sha256": sha256_file(data),
        "backend": backend, "rows": len(prompts), "seed": seed, "l2": l2, "feature": feature,
        **report.as_dict(),
    }
    write_card(path, card, report, "prompts")


def write_card(path: Path, card: dict[str, Any], report: Any, unit: str) -> None:
    """Write a trained probe's JSON card next to it and say where, with its held-out accuracy."""
    card_path = path.with_suffix(".json")
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    acc = report.heldout_accuracy
    typer.echo(f"wrote {path} and {card_path}; held-out accuracy "
               f"{'n/a' if acc is None else f'{acc:.3f}'} on {report.n_heldout} {unit}")


def register(app: typer.Typer) -> None:
    """Add ``guardrail router`` to the main command."""
    app.add_typer(router_app, name="router")
