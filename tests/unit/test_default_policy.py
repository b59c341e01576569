"""The default policy is `balanced`, or `$GUARDRAIL_POLICY`, everywhere one is not named: the chat
model, the agent middleware and the CLI (they defaulted to `adacd` while the docs said
`balanced`)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import guardrail.langchain.calls as calls
from guardrail import GuardedChatModel, GuardrailMiddleware
from guardrail.cli import app
from guardrail.engine import Engine
from guardrail.errors import ConfigError


@pytest.fixture(autouse=True)
def on_fake(fake_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    monkeypatch.setattr(calls, "get_engine", lambda cfg: fake_engine)
    monkeypatch.delenv("GUARDRAIL_POLICY", raising=False)
    return fake_engine


def _starred() -> str:
    out = CliRunner().invoke(app, ["policy", "list"]).output
    return next(line.split()[1] for line in out.splitlines() if line.startswith("*"))


def test_balanced_by_default() -> None:
    llm = GuardedChatModel()
    assert llm.policy == "balanced"
    assert llm._policy_for({}).name == "balanced"
    assert GuardrailMiddleware().policy == "balanced"
    assert _starred() == "balanced"
    assert "name: balanced" in CliRunner().invoke(app, ["policy", "show"]).output


def test_guardrail_policy_names_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDRAIL_POLICY", "strict")
    llm = GuardedChatModel()
    assert llm.policy == "strict" and llm._policy_for({}).name == "strict"
    assert GuardrailMiddleware().policy == "strict"
    assert _starred() == "strict"
    assert GuardedChatModel(policy="plain").policy == "plain"  # a named policy wins


def test_a_bad_default_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDRAIL_POLICY", "no-such-policy")
    with pytest.raises(ConfigError, match="no-such-policy"):
        GuardrailMiddleware()
