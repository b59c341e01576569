"""``guardrail calibrate``: train a model's ``auto`` prompt probe ahead of its first request.

A policy with ``probe: auto`` (``balanced``, the default) calibrates its probe on the first
request to a model it has not seen and keeps it in the cache; that request waits for it (430
prompt reads). Run this when deploying, with the model the deployment serves.
"""

from __future__ import annotations

import time
from typing import Optional

import typer

from guardrail.cli.args import check_backend
from guardrail.errors import GuardrailError
from guardrail.loading import get_engine
from guardrail.policy import ModelConfig
from guardrail.probes.prompt import auto_probe_file, auto_probe_path, calibration_rows


def calibrate(
    model: Optional[str] = typer.Argument(  # noqa: UP007
        None, help="Model to calibrate (a GGUF file or transformers directory; default: the "
        "embedded model)."
    ),
    backend: str = typer.Option("llamacpp", "--backend", help="llamacpp or transformers "
                                "(each backend names the model its own way: calibrate the one "
                                "you serve)."),
    threads: Optional[int] = typer.Option(  # noqa: UP007
        None, "--threads", min=1, help="llama.cpp threads (default: its own)."
    ),
    force: bool = typer.Option(False, "--force", help="Calibrate again even if cached."),
) -> None:
    """Calibrate the `auto` prompt probe of MODEL and cache it ($GUARDRAIL_CACHE or
    ~/.cache/guardrail/probes), with a progress bar; prints where it is."""
    check_backend(backend)
    try:
        engine = get_engine(ModelConfig(backend=backend, path=model,  # type: ignore[arg-type]
                                        n_threads=threads))
        cached = auto_probe_file(engine.backend).is_file() and not force
        t0 = time.perf_counter()
        path = engine.run(lambda: auto_probe_path(engine.backend, force=force))
    except GuardrailError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    if cached:
        typer.echo(f"already calibrated: {path}")
    else:
        typer.echo(f"calibrated {engine.backend.model_name} on {len(calibration_rows())} "
                   f"prompts in {time.perf_counter() - t0:.0f} s: {path}")


def register(app: typer.Typer) -> None:
    """Add ``guardrail calibrate`` to the main command."""
    app.command("calibrate")(calibrate)
