"""The chat model's profile and token counts come from the guarded model (no model: the fake
backend), not from LangChain's GPT-2 fallback, which needs the Hub and counts other tokens."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tools import tool

import guardrail.langchain.calls as calls
from guardrail import GuardedChatModel
from guardrail.engine import Engine


@pytest.fixture(autouse=True)
def on_fake(fake_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    monkeypatch.setattr(calls, "get_engine", lambda cfg: fake_engine)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the GPT-2 fallback would fail here
    return fake_engine


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def test_profile_from_the_policy_without_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[object] = []
    monkeypatch.setattr(calls, "get_engine", lambda cfg: loads.append(cfg))
    llm = GuardedChatModel(policy="plain", n_ctx=2048)
    assert llm.profile is not None and not loads
    assert llm.profile["max_input_tokens"] == 2048
    assert llm.profile["tool_calling"] and llm.profile["tool_choice"]
    assert llm.profile["structured_output"] and not llm.profile["image_inputs"]
    assert GuardedChatModel(policy="plain", n_ctx=1024).profile["max_input_tokens"] == 1024


def test_token_counts_use_the_models_tokenizer(fake_engine: Engine) -> None:
    llm = GuardedChatModel(policy="plain")
    backend = fake_engine.backend
    assert llm.get_token_ids("hello big world") == backend.tokenize_text("hello big world")
    assert llm.get_num_tokens("hello big world") == len(backend.tokenize_text("hello big world"))
    msgs = [HumanMessage("hello big world")]
    want = len(backend.encode_chat([{"role": "user", "content": "hello big world"}]))
    assert llm.get_num_tokens_from_messages(msgs) == want
    assert llm.get_num_tokens_from_messages(msgs, tools=[add]) > want  # the tool block counts


def test_counts_include_the_deployment_prompt(fake_engine: Engine) -> None:
    plain = GuardedChatModel(policy="plain")
    deployed = GuardedChatModel(policy="plain", system_prompt="Be brief. " * 20)
    msgs = [SystemMessage("sys"), HumanMessage("hi")]
    assert deployed.get_num_tokens_from_messages(msgs) > plain.get_num_tokens_from_messages(msgs)
