"""A LangChain v1 agent with two tools, every model step decoded under a guardrail policy.

``GuardrailMiddleware`` wraps each model call of the agent loop (tool-calling steps included)
and reports each step's decisions. The embedded 135M model is small, so this example shows it
one worked example of a tool call and asks its first step to call ``get_weather`` (the
``tool_choice`` of that step); with a larger model, drop both.

Run: python examples/agent.py
"""

from __future__ import annotations

from typing import Any

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from guardrail import GuardedChatModel, GuardrailMiddleware


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"It is sunny and 21 degrees in {city}."


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class CallWeatherFirst(AgentMiddleware):  # type: ignore[type-arg]
    """Make a step that answers the user call ``get_weather`` (for the tiny model)."""

    def wrap_model_call(self, request: ModelRequest, handler: Any) -> Any:
        if isinstance(request.messages[-1], HumanMessage):
            request = request.override(tool_choice="get_weather")
        return handler(request)


WORKED_EXAMPLE = [
    HumanMessage("What is the weather in London?"),
    AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "London"}, "id": "c0"}]),
    ToolMessage("It is sunny and 18 degrees in London.", tool_call_id="c0"),
    AIMessage("It is sunny and 18 degrees in London."),
]


def main(**llm_options: Any) -> dict[str, Any]:
    """Run the agent on one question and print every message and each step's modes."""
    steps: list[dict[str, Any]] = []
    agent = create_agent(
        model=GuardedChatModel(policy="plain", **{"max_new_tokens": 24, **llm_options}),
        tools=[get_weather, add],
        middleware=[CallWeatherFirst(), GuardrailMiddleware(policy="adacd", on_step=steps.append)],
    )
    out = agent.invoke({"messages": [*WORKED_EXAMPLE, HumanMessage("What is the weather in Paris?")]})
    for m in out["messages"][len(WORKED_EXAMPLE) :]:
        calls = getattr(m, "tool_calls", None)
        print(f"{type(m).__name__}: {m.content!r}" + (f" tool_calls={calls}" if calls else ""))
    for s in steps:
        print(f"step {s['agent_step']}: policy={s['policy']} modes={s['modes']}")
    return out


if __name__ == "__main__":
    main()
