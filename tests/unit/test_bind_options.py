"""Options bound to a guarded model are checked when bound, not at the first invoke (no model
is loaded: binding reads nothing)."""

from __future__ import annotations

import pytest
from langchain_core.tools import tool

from guardrail import GuardedChatModel
from guardrail.errors import ConfigError


@tool
def weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


def test_unknown_option_fails_at_bind_time_naming_it() -> None:
    llm = GuardedChatModel(policy="plain")
    with pytest.raises(ConfigError, match="parallel_tool_calls: expected"):
        llm.bind_tools([weather], parallel_tool_calls="sometimes")
    with pytest.raises(ConfigError, match="response_format: expected"):
        llm.bind(response_format="json")
    with pytest.raises(ConfigError, match="unknown call option 'temprature'"):
        llm.bind(temprature=0.2)
    with pytest.raises(ConfigError, match="switching the model per call"):
        llm.bind(model="other.gguf")


def test_known_options_bind() -> None:
    llm = GuardedChatModel(policy="plain")
    bound = llm.bind_tools([weather], tool_choice="auto", max_new_tokens=4)
    assert bound.kwargs["max_new_tokens"] == 4 and bound.kwargs["tool_choice"] == "auto"
    assert llm.bind(temperature=0.5, stop=["\n"]).kwargs == {"temperature": 0.5, "stop": ["\n"]}
