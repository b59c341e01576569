"""``guardrail refusal train``: fit a refusal probe (a learned refusal judge) on labelled
answers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from guardrail.cli.args import check_backend
from guardrail.cli.router import write_card
from guardrail.errors import GuardrailError
from guardrail.experts.data import sha256_file
from guardrail.loading import get_engine
from guardrail.policy import ModelConfig
from guardrail.refusal.agreement import framed, load_labelled
from guardrail.refusal.probe import save_refusal_probe, train_refusal_probe

refusal_app = typer.Typer(help="Refusal detectors (docs/evaluation.md).", no_args_is_help=True)


@refusal_app.callback()
def _group() -> None:
    """Refusal detectors (docs/evaluation.md)."""


@refusal_app.command("train")
def train(
    files: list[Path] = typer.Argument(
        ..., help="Human-labelled answers: XSTest completion CSVs "
        "(prompt, completion, final_label)."
    ),
    out: Path = typer.Option(..., "--out", help="Refusal probe file to write (.safetensors)."),
    model: Optional[str] = typer.Option(  # noqa: UP007
        None, "--model", help="Model that reads the answers (default: the embedded model)."
    ),
    backend: str = typer.Option("llamacpp", "--backend", help="llamacpp or transformers."),
    holdout_every: int = typer.Option(
        4, "--holdout-every", help="Hold out each file's rows 0, N, 2N, ... (0: train on all)."
    ),
    answer_tokens: int = typer.Option(24, "--answer-tokens", help="Answer tokens read."),
    l2: float = typer.Option(0.1, "--l2", min=0, help="L2 penalty of the logistic regression."),
    framed_too: bool = typer.Option(
        False, "--framed", help="Also train on each answer after a long prompt (its question in "
        "two jailbreak framings), so refusals after long requests are read as refusals."
    ),
) -> None:
    """Train a refusal probe; use it with ``--detector probe --probe-file FILE`` or a policy's
    ``refusal: {detector: probe, probe: {path: FILE, model: ...}}``."""

    check_backend(backend)
    try:
        answers = load_labelled(files)
        if framed_too:
            answers = [*answers, *framed(answers)]
        engine = get_engine(ModelConfig(backend=backend, path=model))  # type: ignore[arg-type]
        weights, report = engine.run(lambda: train_refusal_probe(
            engine.backend, answers, holdout_every=holdout_every,
            answer_tokens=answer_tokens, l2=l2,
        ))
        path = save_refusal_probe(weights, out, holdout_every=str(holdout_every),
                                  data=", ".join(f.name for f in files),
                                  framed=str(framed_too).lower())
    except GuardrailError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    card = {
        "probe": path.name, "model": engine.backend.model_name, "model_path": model,
        "backend": backend, "data": {str(f): sha256_file(f) for f in files},
        "holdout_every": holdout_every, "answer_tokens": answer_tokens, "l2": l2,
        "framed": framed_too,
        **report.as_dict(),
    }
    write_card(path, card, report, "answers")


def register(app: typer.Typer) -> None:
    """Add ``guardrail refusal`` to the main command."""
    app.add_typer(refusal_app, name="refusal")
