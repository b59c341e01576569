"""Structured output on the embedded model (llama.cpp): ``response_format``, the three
``with_structured_output`` methods, both JSON engines, refusals, streaming and create_agent's
ProviderStrategy."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from guardrail import GuardedChatModel
from guardrail.errors import ConfigError, RefusalError
from guardrail.policy import load_policy
from guardrail.policy.schema import MatchRule

pytest.importorskip("llama_cpp")

FAST = {"backend": "llamacpp", "n_threads": 1, "policy": "plain"}
ENGINES = ["builtin", pytest.param("llguidance", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("llguidance") is None,
    reason="the grammar extra (llguidance) is not installed"))]


def llm(**kw: Any) -> GuardedChatModel:
    return GuardedChatModel(**{**FAST, "max_new_tokens": 24, **kw})


class City(BaseModel):
    """A city and its country."""

    name: str
    country: str


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"It is sunny in {city}."


@pytest.fixture(params=ENGINES)
def grammar(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each JSON engine in turn, pinned as an operator would ($GUARDRAIL_GRAMMAR)."""
    monkeypatch.setenv("GUARDRAIL_GRAMMAR", request.param)
    return str(request.param)


def test_json_schema_method_returns_the_pydantic_object(grammar: str) -> None:
    out = llm().with_structured_output(City, include_raw=True).invoke(
        "Name the capital of France and its country.")
    raw = out["raw"]
    assert isinstance(raw, AIMessage) and not raw.tool_calls  # the text is the JSON itself
    assert out["parsing_error"] is None, raw.content
    assert isinstance(out["parsed"], City) and out["parsed"].name
    assert json.loads(str(raw.content)) == out["parsed"].model_dump()
    assert raw.response_metadata["guardrail"]["constraint"] == grammar


def test_json_mode_returns_a_dict(grammar: str) -> None:
    out = llm().with_structured_output(None, method="json_mode").invoke(
        "Give a JSON object with a key 'city' for the capital of France.")
    assert isinstance(out, dict)


def test_function_calling_method_still_forces_a_call(grammar: str) -> None:
    out = llm().with_structured_output(City, method="function_calling", include_raw=True
                                       ).invoke("Name the capital of France.")
    assert out["raw"].tool_calls and isinstance(out["parsed"], City)
    assert out["raw"].response_metadata["guardrail"]["constraint"] == grammar


def test_response_format_streams_the_json_text() -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "city",
                                                  "schema": City.model_json_schema()}}
    chunks = list(llm().stream("Name the capital of France.", response_format=rf))
    text = "".join(str(c.content) for c in chunks)
    assert len([c for c in chunks if c.content]) > 1  # it streams, not one last chunk
    assert set(json.loads(text)) == {"name", "country"}


def test_a_cut_off_answer_is_a_parsing_error_with_include_raw() -> None:
    out = llm(max_new_tokens=3).with_structured_output(City, include_raw=True).invoke(
        "Name the capital of France.")
    assert out["parsed"] is None and out["parsing_error"] is not None
    assert out["raw"].response_metadata["guardrail"]["finish_reason"] == "length"


def test_a_policy_answer_is_a_refusal_error_not_a_parse_error() -> None:
    rule = MatchRule(name="france", pattern="france", action="replace",
                     message="I can't help with that.")
    blocked = load_policy("plain").model_copy(update={"name": "blocks-france",
                                                      "rules": [rule]})
    runnable = llm(policy=blocked).with_structured_output(City)
    with pytest.raises(RefusalError, match="blocks-france") as info:
        runnable.invoke("Name the capital of France.")
    assert info.value.raw_message.content == "I can't help with that."  # type: ignore[attr-defined]


def test_bad_response_format_fails_when_bound_naming_it() -> None:
    with pytest.raises(ConfigError, match="response_format"):
        llm().bind(response_format={"type": "yaml"})
    with pytest.raises(ConfigError, match="method: 'xml' is not allowed"):
        llm().with_structured_output(City, method="xml")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cannot be combined with a forced tool call"):
        llm().bind_tools([get_weather], tool_choice="any").invoke(
            "hi", response_format={"type": "json_object"})


def test_parallel_tool_calls_false_ends_the_answer_at_the_first_call() -> None:
    model = llm()
    one = model.bind_tools([get_weather], parallel_tool_calls=False)
    call = model._prepare([HumanMessage("hi")], None, one.kwargs)  # type: ignore[attr-defined]
    assert call.request is not None and "</tool_call>" in call.request.stop
    many = model.bind_tools([get_weather])
    call = model._prepare([HumanMessage("hi")], None, many.kwargs)  # type: ignore[attr-defined]
    assert call.request is not None and "</tool_call>" not in call.request.stop
    with pytest.raises(ConfigError, match="parallel_tool_calls: expected"):
        model.bind_tools([get_weather], parallel_tool_calls="no")


def test_create_agent_provider_strategy() -> None:
    pytest.importorskip("langchain")
    from langchain.agents import create_agent
    from langchain.agents.structured_output import ProviderStrategy

    for response_format in (ProviderStrategy(City), City):  # explicit, and chosen by profile
        agent = create_agent(llm(), tools=[], response_format=response_format)
        state = agent.invoke({"messages": [HumanMessage("Name the capital of France.")]})
        assert isinstance(state["structured_response"], City)


def test_with_tools_offered_the_answer_is_a_call_or_the_json(grammar: str) -> None:
    # What create_agent's ProviderStrategy binds when the agent has tools: either may come.
    rf = {"type": "json_schema", "json_schema": {"name": "city",
                                                  "schema": City.model_json_schema()}}
    bound = llm(max_new_tokens=40).bind_tools([get_weather], response_format=rf)
    for prompt in ("What is the weather in Paris?", "Name the capital of France.",
                   "Which city has the Eiffel tower?"):
        msg = bound.invoke(prompt)
        if msg.tool_calls:
            assert msg.tool_calls[0]["name"] == "get_weather"  # a valid call of the tool
            assert isinstance(msg.tool_calls[0]["args"].get("city"), str)
        else:  # or the JSON answer; never prose
            assert set(json.loads(str(msg.content))) == {"name", "country"}, msg.content


def test_json_schema_on_transformers() -> None:
    pytest.importorskip("transformers")
    out = llm(backend="transformers").with_structured_output(City, include_raw=True).invoke(
        "Name the capital of France and its country.")
    assert isinstance(out["parsed"], City), out["raw"].content
    meta = out["raw"].response_metadata["guardrail"]
    expected = "llguidance" if __import__("importlib").util.find_spec("llguidance") else "builtin"
    assert meta["backend"] == "transformers" and meta["constraint"] == expected
