"""``guardrail policy``: list, show, validate policies; print their JSON Schema and reference."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml

from guardrail.errors import PolicyError
from guardrail.policy.loader import (
    default_policy_name,
    dump_policy,
    load_policy,
    load_policy_file,
    shipped_policies,
)
from guardrail.policy.problems import PolicyValidationError
from guardrail.policy.reference import json_schema_text, markdown_reference

policy_app = typer.Typer(
    help="Safety policies: list, show, validate; JSON Schema and reference.",
    no_args_is_help=True,
)


@policy_app.command("list")
def list_policies() -> None:
    """List the shipped policies (name, strategy, description); the default is starred."""
    default = default_policy_name()
    for name in sorted(shipped_policies()):
        policy = load_policy(name)
        mark = "*" if name == default else " "
        typer.echo(f"{mark} {name:<12} {policy.strategy.kind:<8} {policy.description}")


@policy_app.command("show")
def show(
    name: str = typer.Argument(None, help="Shipped name or YAML path (default: the default)."),
) -> None:
    """Print a policy fully resolved (after extends and ${VAR}) as YAML."""
    try:
        policy = load_policy(name)
    except PolicyError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    text = yaml.safe_dump(dump_policy(policy), sort_keys=False, allow_unicode=True, width=100)
    typer.echo(text, nl=False)


@policy_app.command("validate")
def validate(
    files: list[Path] = typer.Argument(..., help="Policy YAML files (or shipped names)."),
) -> None:
    """Check policy files; list every problem and exit 1 if any file is bad."""
    bad = 0
    for f in files:
        try:
            loaded = load_policy_file(f)
        except PolicyValidationError as e:
            bad += 1
            for p in e.problems:
                typer.echo(str(p), err=True)
        except PolicyError as e:
            bad += 1
            typer.echo(f"{f}: {e}", err=True)
        else:
            typer.echo(f"{f}: ok ({loaded.policy.name}, strategy {loaded.policy.strategy.kind})")
    if bad:
        typer.echo(f"{bad} of {len(files)} policy file(s) invalid", err=True)
        raise typer.Exit(1)


@policy_app.command("schema")
def schema(
    output: Path = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
) -> None:
    """Print the JSON Schema of policy files (for editor completion and checking)."""
    _write(json_schema_text(), output)


@policy_app.command("docs")
def docs(
    output: Path = typer.Option(None, "--output", "-o", help="Write here instead of stdout."),
) -> None:
    """Print the Markdown policy reference generated from the schema (docs/policies.md)."""
    _write(markdown_reference(), output)


def _write(text: str, output: Path | None) -> None:
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output}", err=True)


def register(app: typer.Typer) -> None:
    """Add the ``policy`` command group to ``app``."""
    app.add_typer(policy_app, name="policy")


__all__ = ["policy_app", "register"]
