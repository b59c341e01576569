"""``guardrail chat``: answer one prompt under a policy, streaming token by token."""

from __future__ import annotations

import sys
from typing import Any

import typer

from guardrail.decoding.loop import FinishEvent, TokenEvent
from guardrail.loading import get_engine
from guardrail.errors import GuardrailError
from guardrail.guard import Guard
from guardrail.policy.decisions import format_step, log_step
from guardrail.policy.loader import load_policy, with_overrides


def chat(
    prompt: str = typer.Argument(..., help="The user message."),
    policy_name: str = typer.Option(
        None, "--policy", "-p", help="Shipped policy name or YAML path (default: $GUARDRAIL_POLICY "
        "or balanced)."
    ),
    model: str = typer.Option(None, "--model", "-m", help="GGUF file or model directory."),
    backend: str = typer.Option(None, "--backend", "-b", help="llamacpp or transformers."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", "-n", help="Most new tokens."),
    trace: bool = typer.Option(False, "--trace", help="Print each step's mode and agreement."),
) -> None:
    """Stream the answer to PROMPT under a policy; --trace prints the per-step decisions."""
    overrides: dict[str, Any] = {}
    if model is not None:
        overrides.setdefault("model", {})["path"] = model
    if backend is not None:
        overrides.setdefault("model", {})["backend"] = backend
    if max_new_tokens is not None:
        overrides["sampling"] = {"max_new_tokens": max_new_tokens}
    try:
        policy = load_policy(policy_name)
        if overrides:
            policy = with_overrides(policy, overrides, source="command line")
        engine = get_engine(policy.model)
        messages = [{"role": "user", "content": prompt}]
        guard = Guard(policy, engine)
        verdict = guard.check_request(messages)  # a rule that raises ends here
        if verdict is not None and verdict.answers:
            typer.echo(verdict.message)
            if trace:
                typer.echo(f"[matched rule {verdict.rule}, nothing decoded]", err=True)
            return
        held = guard.holds_answer  # the answer may be replaced: print it at the end
        finish: FinishEvent | None = None
        for ev in engine.stream([engine.request(policy, messages)]):
            if isinstance(ev, TokenEvent):
                log_step(policy, ev.step, ev.info)
                if trace:
                    typer.echo(f"[{format_step(ev.step, ev.info)} token={ev.token}]", err=True)
                if not held:
                    typer.echo(ev.text, nl=False)
                    sys.stdout.flush()
            elif isinstance(ev, FinishEvent):
                finish = ev
        assert finish is not None  # the loop finishes every request it was given
        # Decided once the model is released: a detector may run the model itself.
        answer = guard.review(prompt, finish.text)
        typer.echo(answer.text if held else finish.tail)
        if trace:
            typer.echo(f"[finished: {finish.reason}, {len(finish.token_ids)} tokens, "
                       f"policy {policy.name}]", err=True)
            typer.echo(f"[refused: {answer.refusal.refused} by {answer.refusal.detector}"
                       f"{', answer replaced' if answer.replaced else ''}]", err=True)
    except GuardrailError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Add the ``chat`` command to ``app``."""
    app.command("chat")(chat)


__all__ = ["chat", "register"]
