"""The ``guardrail`` command. Each sub-command group lives in its own module."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="guardrail",
    help="Decode-time safety policies for local LLMs.",
    no_args_is_help=True,
    add_completion=False,
)


def _register() -> None:
    from guardrail.cli import demo

    demo.register(app)


_register()

__all__ = ["app"]
