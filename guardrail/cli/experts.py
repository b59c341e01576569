"""``guardrail experts convert-lora``: a PEFT expert adapter as a GGUF LoRA for llama.cpp."""

from __future__ import annotations

from pathlib import Path

import typer

from guardrail.errors import GuardrailError
from guardrail.experts.lora_gguf import convert_peft_lora
from guardrail.models import resolve_model_path

experts_app = typer.Typer(help="Expert adapters (docs/experts.md).", no_args_is_help=True)


@experts_app.callback()
def _group() -> None:
    """Expert adapters (docs/experts.md)."""


@experts_app.command("convert-lora")
def convert_lora(
    adapter: Path = typer.Argument(..., help="PEFT LoRA adapter directory (down_proj experts)."),
    out: Path = typer.Option(..., "--out", "-o", help="GGUF LoRA file to write."),
    model: str = typer.Option(
        None, "--model", help="The base model's GGUF (default: the embedded model)."
    ),
) -> None:
    """Convert a MidPO expert adapter so llama.cpp can run it as an expert stream."""

    try:
        path = convert_peft_lora(adapter, resolve_model_path(model), out)
    except GuardrailError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add ``guardrail experts`` to the main command."""
    app.add_typer(experts_app, name="experts")
