"""``guardrail serve`` on the embedded model (llama.cpp), used by real clients: the ``openai``
SDK, ``langchain_openai.ChatOpenAI`` and a ``create_agent`` agent whose model is ChatOpenAI
pointed at the server. One server for the module (policies ``plain`` and ``balanced``, answers
capped at 24 tokens to keep it fast)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
pytest.importorskip("langchain_openai")
pytest.importorskip("langchain.agents")

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel
from servers import running

from guardrail.serve import (
    ServeConfig,
    create_app,
    translate,
)

pytestmark = pytest.mark.llamacpp

KEY = "test-key"
CAP = 24
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
CAPITAL_SCHEMA = {"type": "object", "properties": {
    "country": {"type": "string"}, "capital": {"type": "string"}},
    "required": ["country", "capital"], "additionalProperties": False}
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]

seen: list[list[BaseMessage]] = []  # every conversation the server decoded


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    real = translate.to_langchain

    def recording(messages: Any) -> list[BaseMessage]:
        out = real(messages)
        seen.append(out)
        return out

    translate.to_langchain = recording  # type: ignore[assignment]
    try:
        app = create_app(ServeConfig(policies=["plain", "balanced"], backend="llamacpp",
                                     max_tokens=CAP, api_keys=[KEY]))
        with running(app, start_timeout=300) as base:
            yield f"{base}/v1"
    finally:
        translate.to_langchain = real  # type: ignore[assignment]


@pytest.fixture(scope="module")
def client(base_url: str) -> Any:
    return openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=120)


def chat_openai(base_url: str, **kw: Any) -> ChatOpenAI:
    return ChatOpenAI(base_url=base_url, api_key=KEY, model="plain", max_retries=0,  # type: ignore[arg-type]
                      timeout=120, **{"max_tokens": 16, **kw})


# ------------------------------------------------------------------------------ openai SDK


def test_openai_models_and_auth(client: Any, base_url: str) -> None:
    assert [m.id for m in client.models.list()] == ["plain", "balanced"]
    bad = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.NotFoundError, match="plain, balanced"):
        client.chat.completions.create(model="gpt-4o", messages=FRANCE)


def test_openai_completion(client: Any) -> None:
    for policy in ("plain", "balanced"):
        r = client.chat.completions.create(model=policy, messages=FRANCE, max_tokens=12)
        assert r.object == "chat.completion" and r.model == policy
        assert isinstance(r.choices[0].message.content, str) and r.choices[0].message.content
        assert r.choices[0].finish_reason in ("stop", "length")
        assert 0 < r.usage.completion_tokens <= 12
        trace = r.model_extra["guardrail"]
        assert trace["policy"] == policy and "refused" in trace
    assert trace["strategy"] == "gated_cd"


def test_openai_stream(client: Any) -> None:
    stream = client.chat.completions.create(model="plain", messages=FRANCE, max_tokens=12,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].model_extra["guardrail"]["policy"] == "plain"
    assert chunks[-1].choices == [] and 0 < chunks[-1].usage.completion_tokens <= 12


def test_openai_forced_tool_call(client: Any) -> None:
    r = client.chat.completions.create(
        model="plain", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id and call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert isinstance(args["city"], str)


def test_openai_streamed_tool_call(client: Any) -> None:
    stream = client.chat.completions.create(
        model="plain", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL], tool_choice="required", stream=True)
    chunks = [c for c in stream if c.choices]
    calls = [tc for c in chunks for tc in c.choices[0].delta.tool_calls or []]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].function.name == "get_weather"
    assert isinstance(json.loads(calls[0].function.arguments)["city"], str)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_concurrent_requests(base_url: str) -> None:
    async def run() -> list[Any]:
        aclient = openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=120)
        prompts = ["What is the capital of France?", "Name a colour.", "Say hello."]
        return await asyncio.gather(*(
            aclient.chat.completions.create(model=m, max_tokens=8, messages=[
                {"role": "user", "content": q}]) for q, m in zip(prompts, ["plain", "balanced",
                                                                            "plain"])))

    out = asyncio.run(run())
    assert [r.model for r in out] == ["plain", "balanced", "plain"]
    assert all(r.choices[0].message.content and r.usage.completion_tokens <= 8 for r in out)


def test_openai_json_schema(client: Any) -> None:
    r = client.chat.completions.create(
        model="plain", messages=FRANCE,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "capital", "schema": CAPITAL_SCHEMA}})
    assert r.choices[0].finish_reason == "stop" and not r.choices[0].message.tool_calls
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"country", "capital"}
    assert all(isinstance(v, str) for v in data.values())
    stream = client.chat.completions.create(
        model="plain", messages=FRANCE, stream=True,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "capital", "schema": CAPITAL_SCHEMA}})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert json.loads(text) == data  # greedy: the same answer, released at the end
    r = client.chat.completions.create(model="plain", messages=FRANCE,
                                       response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


# ---------------------------------------------------------------------- langchain-openai


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"It is sunny in {city}."


class Capital(BaseModel):
    """A country and its capital city."""

    country: str
    capital: str


def test_chat_openai(base_url: str) -> None:
    llm = chat_openai(base_url)
    msg = llm.invoke("What is the capital of France?")
    assert isinstance(msg, AIMessage) and isinstance(msg.content, str) and msg.content
    assert msg.usage_metadata and msg.usage_metadata["output_tokens"] > 0
    chunks = list(llm.stream("What is the capital of France?"))
    assert "".join(str(c.content) for c in chunks).strip()
    call = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(
        "What is the weather in Paris?")
    assert call.tool_calls and call.tool_calls[0]["name"] == "get_weather"
    assert isinstance(call.tool_calls[0]["args"]["city"], str)
    out = chat_openai(base_url, max_tokens=CAP).with_structured_output(Capital).invoke(
        "What is the capital of France?")
    assert isinstance(out, Capital)


class ForceThenAnswer(AgentMiddleware):  # type: ignore[type-arg]
    """Bound the tiny model's loop: the step answering the user must call get_weather, the
    step after the tool result must answer in text."""

    def wrap_model_call(self, request: ModelRequest, handler: Any) -> Any:
        last = request.messages[-1]
        choice = "get_weather" if isinstance(last, HumanMessage) else "none"
        return handler(request.override(tool_choice=choice))


def test_agent_through_the_server(base_url: str) -> None:
    seen.clear()
    agent = create_agent(model=chat_openai(base_url), tools=[get_weather],
                         middleware=[ForceThenAnswer()])
    out = agent.invoke({"messages": [HumanMessage("What is the weather in Paris?")]},
                       {"recursion_limit": 6})
    msgs = out["messages"]
    assert isinstance(msgs[1], AIMessage) and msgs[1].tool_calls[0]["name"] == "get_weather"
    assert isinstance(msgs[2], ToolMessage) and "It is sunny in" in str(msgs[2].content)
    assert isinstance(msgs[-1], AIMessage) and not msgs[-1].tool_calls and len(msgs) == 4
    # the server decoded the tool result as a tool message of the conversation
    assert len(seen) == 2
    tool_msgs = [m for m in seen[1] if isinstance(m, ToolMessage)]
    assert tool_msgs and tool_msgs[0].tool_call_id == msgs[1].tool_calls[0]["id"]
