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
    from guardrail.cli import chat, demo, policy
    from guardrail.cli import eval as eval_cli

    demo.register(app)
    policy.register(app)
    chat.register(app)
    eval_cli.register(app)
    from guardrail.cli import router as router_cli

    router_cli.register(app)
    from guardrail.cli import experts as experts_cli

    experts_cli.register(app)
    from guardrail.cli import tune as tune_cli

    tune_cli.register(app)
    from guardrail.cli import refusal as refusal_cli

    refusal_cli.register(app)


_register()

__all__ = ["app"]
