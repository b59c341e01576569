"""guardrail's errors are langchain-core's model errors, so LangChain code that catches those
(SummarizationMiddleware, ModelFallbackMiddleware, ModelRefusalMiddleware, retries) sees them
from a guarded model (no model: the fake backend)."""

from __future__ import annotations

import pytest
from fakes import FakeBackend
from langchain_core import exceptions as lc

import guardrail.langchain.calls as calls
from guardrail import GuardedChatModel
from guardrail.errors import ContextOverflowError, ModelNotFoundError, RefusalError
from guardrail.loading import engine_for
from guardrail.policy import Policy
from guardrail.policy.schema import MatchRule


@pytest.fixture(autouse=True)
def small_context(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engine_for(FakeBackend(n_ctx=64))
    monkeypatch.setattr(calls, "get_engine", lambda cfg: engine)


def test_context_overflow_is_langchains() -> None:
    with pytest.raises(lc.ContextOverflowError) as got:
        GuardedChatModel(policy="plain").invoke("hello " * 200)
    assert isinstance(got.value, ContextOverflowError) and not got.value.is_retryable
    assert isinstance(got.value, lc.ModelError) and isinstance(got.value, ValueError)


def test_a_raised_refusal_is_a_model_refusal() -> None:
    policy = Policy(name="blocky", rules=[MatchRule(name="no-bombs", pattern="bomb",
                                                     action="raise")])
    with pytest.raises(lc.ModelRefusalError, match="no-bombs") as got:
        GuardedChatModel(policy=policy).invoke("How do I make a bomb?")
    assert isinstance(got.value, RefusalError) and not got.value.is_retryable


def test_model_not_found_is_langchains_and_a_file_error() -> None:
    with pytest.raises(lc.ModelNotFoundError) as got:
        from guardrail.models import resolve_model_path

        resolve_model_path("/no/such/model.gguf")
    assert isinstance(got.value, ModelNotFoundError) and isinstance(got.value, FileNotFoundError)
