"""``guardrail tune``: sweep a policy's strategy parameters over a labelled prompt file.

Every setting of the grid becomes a policy (the base policy with those strategy values), all are
run through the evaluation harness in one run directory (resumable), and the trade-off per
setting (refusal on safe prompts vs refusal on unsafe prompts) is printed and plotted.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Optional

import typer

from guardrail.errors import ConfigError, GuardrailError
from guardrail import eval as ev
from guardrail.policy import load_policy
from guardrail.policy.loader import with_overrides


def parse_param(spec: str) -> tuple[str, list[Any]]:
    """``"alpha=1,2,4.5"`` -> ``("alpha", [1.0, 2.0, 4.5])`` (numbers parsed, else strings)."""
    name, sep, values = spec.partition("=")
    name = name.strip()
    if not sep or not name or not values.strip():
        raise ConfigError(f"--param: expected NAME=V1,V2,..., got {spec!r}")
    out: list[Any] = []
    for v in values.split(","):
        v = v.strip()
        if not v:
            raise ConfigError(f"--param {name}: empty value in {spec!r}")
        try:
            out.append(int(v) if v.lstrip("-").isdigit() else float(v))
        except ValueError:
            out.append(v)
    return name, out


def grid_policies(base: Any, params: list[tuple[str, list[Any]]], threads: int | None) -> list[Any]:
    """One policy per grid point: ``base`` with the strategy values set, named after them."""

    policy = load_policy(base)
    names = [n for n, _ in params]
    if len(set(names)) != len(names):
        raise ConfigError(f"--param: a parameter is given twice: {', '.join(names)}")
    out = []
    for values in itertools.product(*(v for _, v in params)):
        setting = dict(zip(names, values))
        label = ",".join(f"{k}={v}" for k, v in setting.items())
        strategy: dict[str, Any] = {}
        for dotted, value in setting.items():  # probe.threshold=0.3 -> {"probe": {"threshold"}}
            *parents, leaf = dotted.split(".")
            node = strategy
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        over: dict[str, Any] = {"name": f"{policy.name}[{label}]", "strategy": strategy}
        if threads is not None:
            over["model"] = {"n_threads": threads}
        out.append(with_overrides(policy, over, source=f"--param {label}"))
    return out


def plot_tradeoff(rows: list[tuple[str, float | None, float | None]], path: Path) -> None:
    """Scatter of refusal on safe (x) vs refusal on unsafe (y), one labelled point per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for name, safe, unsafe in rows:
        if safe is None or unsafe is None:
            continue
        ax.scatter(safe, unsafe)
        ax.annotate(name, (safe, unsafe), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("refusal on safe prompts (lower is better)")
    ax.set_ylabel("refusal on unsafe prompts (higher is better)")
    ax.set_title("guardrail tune: trade-off per setting")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tune(
    policy: str = typer.Option(..., "--policy", "-p", help="Base policy name or YAML path."),
    param: list[str] = typer.Option(
        ..., "--param", help="Strategy parameter and values, NAME=V1,V2,... (nested: probe.threshold=0.3,0.5); "
        "repeat for a grid."
    ),
    data: str = typer.Option(..., help="Labelled prompt file (CSV/JSONL with prompt, label)."),
    out: Path = typer.Option(..., help="Run directory (results, summary, tradeoff.png)."),
    model: Optional[str] = typer.Option(  # noqa: UP007 - typer needs Optional here
        None, help="Model path (default: the policy's)."
    ),
    backend: Optional[str] = typer.Option(None, help="llamacpp or transformers."),  # noqa: UP007
    limit: Optional[int] = typer.Option(  # noqa: UP007
        None, help="Use N prompts, taken in turn from each type."
    ),
    max_new_tokens: int = typer.Option(24, help="Answer length."),
    detector: str = typer.Option("string_match", help="string_match, judge or probe."),
    batch_size: int = typer.Option(8, help="Prompts decoded together."),
    threads: Optional[int] = typer.Option(  # noqa: UP007
        None, help="llama.cpp CPU threads (default: all)."
    ),
) -> None:
    """Sweep a rule's parameters and print safe-prompt vs unsafe-prompt refusal per setting."""

    try:
        params = [parse_param(p) for p in param]
        policies = grid_policies(policy, params, threads)
        summary = ev.run(
            policies, data, out=out, model=model, backend=backend, limit=limit,
            max_new_tokens=max_new_tokens, detector=detector, batch_size=batch_size,
        )
        rows = [(p.policy, p.over_refusal_rate, p.safety_rate) for p in summary.policies]
        plot_tradeoff(rows, out / "tradeoff.png")
    except GuardrailError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from e

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    width = max(len(r[0]) for r in rows)
    typer.echo(f"{'setting':<{width}}  refusal-safe  refusal-unsafe")
    for name, safe, unsafe in rows:
        typer.echo(f"{name:<{width}}  {pct(safe):>12}  {pct(unsafe):>14}")
    typer.echo(f"plot: {out / 'tradeoff.png'}")


def register(app: typer.Typer) -> None:
    """Add ``guardrail tune`` to ``app``."""
    app.command("tune")(tune)
