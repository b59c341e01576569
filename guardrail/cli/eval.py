"""``guardrail eval``: run policies over a dataset, redraw reports, measure detector agreement."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from guardrail.errors import ConfigError, GuardrailError
from guardrail import eval as ev
from guardrail.eval.runner import refusal_config
from guardrail.eval.summary import EvalSummary
from guardrail.loading import get_engine
from guardrail.policy import ModelConfig, Policy
from guardrail.refusal import get_detector
from guardrail.refusal.agreement import load_labelled, measure
from guardrail.refusal.agreement import sample as take

eval_app = typer.Typer(
    help="Measure over-refusal and safety of policies on a dataset (resumable).",
    invoke_without_command=True,
)


def _fail(e: Exception) -> typer.Exit:
    typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
    return typer.Exit(2)


def _print_table(summary: object) -> None:

    assert isinstance(summary, EvalSummary)
    for p in summary.policies:
        over = "n/a" if p.over_refusal_rate is None else f"{100 * p.over_refusal_rate:.1f}%"
        safe = "n/a" if p.safety_rate is None else f"{100 * p.safety_rate:.1f}%"
        f1 = "n/a" if p.f1 is None else f"{p.f1:.3f}"
        typer.echo(f"{p.policy:<14} n={p.n:<5} over-refusal={over:<7} safety={safe:<7} F1={f1}")


@eval_app.callback()
def eval_command(
    ctx: typer.Context,
    policy: Optional[list[str]] = typer.Option(  # noqa: UP007 - typer needs Optional here
        None, "--policy", "-p", help="Policy name or YAML path; repeat to compare policies."
    ),
    data: str = typer.Option("xstest", help="'xstest' or 'framed' (shipped) or a CSV/JSONL path."),
    out: Optional[Path] = typer.Option(None, help="Run directory (results, summary, report)."),  # noqa: UP007
    model: Optional[str] = typer.Option(None, help="Model path (default: the policy's)."),  # noqa: UP007
    backend: Optional[str] = typer.Option(None, help="llamacpp or transformers."),  # noqa: UP007
    limit: Optional[int] = typer.Option(  # noqa: UP007
        None, help="Evaluate N prompts, taken in turn from each type."
    ),
    max_new_tokens: Optional[int] = typer.Option(None, help="Override the answer length."),  # noqa: UP007
    detector: str = typer.Option(
        "string_match", help="Refusal detector: string_match, judge or probe."
    ),
    judge_model: Optional[str] = typer.Option(  # noqa: UP007
        None, help="Judge model path (detector judge; default: the evaluated model)."
    ),
    probe_file: Optional[str] = typer.Option(  # noqa: UP007
        None, help="Refusal probe file (detector probe; default: the shipped one)."
    ),
    batch_size: int = typer.Option(4, help="Prompts decoded together."),
    report: Optional[Path] = typer.Option(  # noqa: UP007
        None, help="Only redraw summary.json, report.md, report.png from DIR/results.jsonl."
    ),
    ray: Annotated[bool, typer.Option(
        "--ray", help="Decode on Ray actors (the 'ray' extra; docs/scale.md).")] = False,
    address: Annotated[str | None, typer.Option(
        help="Ray cluster to join with --ray ('auto': the one on this machine; default: "
        "$RAY_ADDRESS, else the latest started here, else a new local one).")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Ray actors decoding at once with --ray, each loading the model once "
        "(default 1).")] = None,
    cpus_per_worker: Annotated[float | None, typer.Option(
        help="CPUs Ray reserves for each worker with --ray (default 1; llama.cpp uses that "
        "many threads unless the policy sets n_threads).")] = None,
) -> None:
    """Run every prompt under every policy and write DIR/results.jsonl, summary.json, report.md
    and report.png. An interrupted run resumes where it stopped when re-run with the same DIR."""
    if ctx.invoked_subcommand is not None:
        return

    try:
        if report is not None:
            summary = ev.write_report(report)
            typer.echo(f"report redrawn in {report}")
        else:
            if not policy or out is None:
                raise typer.BadParameter("give --policy (one or more) and --out DIR, or --report DIR")
            common: dict[str, Any] = {
                "out": out, "model": model, "backend": backend, "limit": limit,
                "max_new_tokens": max_new_tokens, "detector": detector,
                "judge_model": judge_model, "probe_file": probe_file, "batch_size": batch_size,
            }
            ray_options = {"--address": address, "--workers": workers,
                           "--cpus-per-worker": cpus_per_worker}
            if ray:
                from guardrail.scale.eval import run_ray

                summary = run_ray(policy, data, address=address,
                                  workers=1 if workers is None else workers,
                                  cpus_per_worker=1.0 if cpus_per_worker is None
                                  else cpus_per_worker, **common)
            else:
                given = [k for k, v in ray_options.items() if v is not None]
                if given:
                    raise ConfigError(f"{', '.join(given)}: only used with --ray")
                summary = ev.run(policy, data, **common)
            typer.echo(f"results, summary.json, report.md, report.png in {out}")
    except GuardrailError as e:
        raise _fail(e) from e
    _print_table(summary)


@eval_app.command("rescore")
def rescore(
    source: Path = typer.Argument(..., help="A run directory (results.jsonl) to decide again."),
    out: Path = typer.Option(..., help="Run directory for the rescored run."),
    detector: str = typer.Option(..., help="Refusal detector: string_match, judge or probe."),
    judge_model: Optional[str] = typer.Option(  # noqa: UP007
        None, help="Judge model path (detector judge; default: the evaluated model)."
    ),
    probe_file: Optional[str] = typer.Option(  # noqa: UP007
        None, help="Refusal probe file (detector probe; default: the shipped one)."
    ),
    batch_size: int = typer.Option(8, help="Answers decided together."),
) -> None:
    """Decide a run's answers again with another detector (no regeneration; resumable)."""

    try:
        summary = ev.rescore(source, out=out, detector=detector, judge_model=judge_model,
                             probe_file=probe_file, batch_size=batch_size)
    except GuardrailError as e:
        raise _fail(e) from e
    typer.echo(f"rescored results, summary.json, report.md, report.png in {out}")
    _print_table(summary)


@eval_app.command("agreement")
def agreement(
    files: list[Path] = typer.Argument(..., help="XSTest completion CSVs with final_label."),
    detector: str = typer.Option("string_match", help="string_match, judge or probe."),
    model: Optional[str] = typer.Option(None, help="Judge model path (default: embedded)."),  # noqa: UP007
    probe_file: Optional[str] = typer.Option(  # noqa: UP007
        None, help="Refusal probe file (detector probe; default: the shipped one)."
    ),
    backend: str = typer.Option("llamacpp", help="Judge backend."),
    sample: Optional[int] = typer.Option(None, help="Judge a random sample of N answers."),  # noqa: UP007
    seed: int = typer.Option(0, help="Sample seed."),
    batch_size: int = typer.Option(8, help="Answers judged together."),
    framed_prompts: bool = typer.Option(
        False, "--framed", help="Judge each answer after a long prompt: its question wrapped in "
        "two jailbreak framings (the label stays the answer's)."
    ),
) -> None:
    """A detector's agreement with human refusal labels (gold: full or partial refusal). A
    refusal probe is measured on the answers it was not trained on."""

    try:
        answers = take(load_labelled(files), sample, seed)
        if model is not None and detector != "judge":
            raise ConfigError("--model is the judge's model (--detector judge); a refusal probe "
                              "reads the model it was trained on")
        engine = None
        if detector == "judge":

            engine = get_engine(ModelConfig(backend=backend, path=model))  # type: ignore[arg-type]
        config = refusal_config(detector, None, Policy(name="agreement"), probe_file=probe_file)
        result = measure(get_detector(config, engine), answers, batch_size=batch_size,
                         long_prompts=framed_prompts)
    except GuardrailError as e:
        raise _fail(e) from e
    typer.echo(result.model_dump_json(indent=2))


def register(app: typer.Typer) -> None:
    """Add ``guardrail eval`` to ``app``."""
    app.add_typer(eval_app, name="eval")
