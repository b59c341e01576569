"""The ``guardrail`` command. Each sub-command group lives in its own module."""

from __future__ import annotations

import typer

from guardrail.cli import calibrate, chat, demo, policy
from guardrail.cli import eval as eval_cli
from guardrail.cli import experts as experts_cli
from guardrail.cli import refusal as refusal_cli
from guardrail.cli import router as router_cli
from guardrail.cli import serve as serve_cli
from guardrail.cli import train as train_cli
from guardrail.cli import tune as tune_cli

app = typer.Typer(
    name="guardrail",
    help="Decode-time safety policies for local LLMs.",
    no_args_is_help=True,
    add_completion=False,
)


for _module in (demo, policy, chat, calibrate, eval_cli, router_cli, experts_cli, tune_cli,
                refusal_cli, serve_cli, train_cli):
    _module.register(app)

__all__ = ["app"]
