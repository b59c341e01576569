"""GuardrailMiddleware with langchain's create_agent on the real embedded model."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain.agents")
pytest.importorskip("llama_cpp")

from langchain.agents import create_agent  # noqa: E402
from langchain.agents.middleware import AgentMiddleware, ModelRequest  # noqa: E402
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402

from guardrail import GuardedChatModel, GuardrailMiddleware  # noqa: E402
from guardrail.errors import ConfigError  # noqa: E402

executed: list[str] = []


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    executed.append(f"get_weather({city})")
    return f"It is sunny in {city}."


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    executed.append(f"add({a},{b})")
    return a + b


class FirstCallUsesWeather(AgentMiddleware):  # type: ignore[type-arg]
    """Nudge the tiny model: a step answering the user must call get_weather (tool_choice);
    the step after the tool result is free."""

    def wrap_model_call(self, request: ModelRequest, handler: Any) -> Any:
        if isinstance(request.messages[-1], HumanMessage):
            request = request.override(tool_choice="get_weather")
        return handler(request)

    async def awrap_model_call(self, request: ModelRequest, handler: Any) -> Any:
        if isinstance(request.messages[-1], HumanMessage):
            request = request.override(tool_choice="get_weather")
        return await handler(request)


FEW_SHOT = [
    HumanMessage("What is the weather in London?"),
    AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "London"}, "id": "c0"}]),
    ToolMessage("It is sunny in London.", tool_call_id="c0"),
    AIMessage("It is sunny in London."),
]


def _agent(steps: list[dict[str, Any]]) -> Any:
    model = GuardedChatModel(policy="plain", backend="llamacpp", n_threads=1, max_new_tokens=16)
    return create_agent(
        model=model,
        tools=[get_weather, add],
        middleware=[
            FirstCallUsesWeather(),
            GuardrailMiddleware(policy="adacd", on_step=steps.append),
        ],
    )


def _check_run(out: dict[str, Any], steps: list[dict[str, Any]]) -> None:
    msgs = out["messages"][len(FEW_SHOT) + 1 :]
    first = msgs[0]
    assert isinstance(first, AIMessage) and first.tool_calls, first
    assert first.tool_calls[0]["name"] == "get_weather"
    tool_msgs = [m for m in msgs if isinstance(m, ToolMessage)]
    assert tool_msgs and "It is sunny in" in str(tool_msgs[0].content)  # the tool really ran
    final = msgs[-1]
    assert isinstance(final, AIMessage) and not final.tool_calls
    for m in msgs:
        if isinstance(m, AIMessage):
            g = m.response_metadata["guardrail"]
            assert g["policy"] == "adacd"  # the middleware's policy, not the model's "plain"
            assert g["modes"] and "agent_step" in g
    assert [s["agent_step"] for s in steps] == sorted(s["agent_step"] for s in steps)
    assert len(steps) >= 2


def test_agent_runs_tool_calling_loop_under_policy() -> None:
    executed.clear()
    steps: list[dict[str, Any]] = []
    out = _agent(steps).invoke(
        {"messages": [*FEW_SHOT, HumanMessage("What is the weather in Paris?")]}
    )
    _check_run(out, steps)
    assert executed and executed[0].startswith("get_weather(")


async def test_agent_async() -> None:
    steps: list[dict[str, Any]] = []
    out = await _agent(steps).ainvoke(
        {"messages": [*FEW_SHOT, HumanMessage("What is the weather in Paris?")]}
    )
    _check_run(out, steps)


def test_remote_model_is_refused_clearly() -> None:
    agent = create_agent(
        model=GenericFakeChatModel(messages=iter([AIMessage("hi")])),
        tools=[add],
        middleware=[GuardrailMiddleware(policy="adacd")],
    )
    with pytest.raises(ConfigError, match="cannot be guarded.*logits"):
        agent.invoke({"messages": [HumanMessage("hi")]})


def test_bad_middleware_options() -> None:
    with pytest.raises(ConfigError, match="frobnicate"):
        GuardrailMiddleware(policy="adacd", frobnicate=1)
    with pytest.raises(ValueError, match="nope"):
        GuardrailMiddleware(policy="nope")
