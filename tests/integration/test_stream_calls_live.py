"""Streaming on the embedded model: a forced tool call arrives as ``tool_call_chunks`` while
its JSON decodes (the merged stream equals ``invoke``), and the shipped ``strict`` policy
streams an answer once its refusal detector has decided instead of holding it to the end."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk
from langchain_core.tools import tool

from guardrail import GuardedChatModel

pytest.importorskip("llama_cpp")

FAST = {"backend": "llamacpp", "n_threads": 1}


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"It is sunny in {city}."


def merged(chunks: list[Any]) -> AIMessageChunk:
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    return total


def test_a_forced_call_streams_its_arguments_and_merges_to_invokes_call() -> None:
    model = GuardedChatModel(**FAST, policy="plain", max_new_tokens=24)
    bound = model.bind_tools([get_weather], tool_choice="get_weather")
    prompt = "What is the weather in Paris?"
    chunks = list(bound.stream(prompt))
    with_calls = [i for i, c in enumerate(chunks) if c.tool_call_chunks]
    assert with_calls and with_calls[0] == 0  # the forced name opens the first chunk
    assert chunks[0].tool_call_chunks[0]["name"] == "get_weather"
    assert len([i for i in with_calls if i < len(chunks) - 1]) >= 3  # arguments as they decode
    agg = merged(chunks)
    answer = bound.invoke(prompt)
    assert answer.tool_calls, answer.invalid_tool_calls
    assert [(c["name"], c["args"]) for c in agg.tool_calls] == [
        (c["name"], c["args"]) for c in answer.tool_calls
    ]
    assert agg.tool_calls[0]["id"] == chunks[0].tool_call_chunks[0]["id"]


def test_a_call_cut_off_by_the_budget_is_invalid_in_the_stream_as_in_invoke() -> None:
    model = GuardedChatModel(**FAST, policy="plain", max_new_tokens=3)
    bound = model.bind_tools([get_weather], tool_choice="get_weather")
    agg = merged(list(bound.stream("What is the weather in Paris?")))
    answer = bound.invoke("What is the weather in Paris?")
    assert not answer.tool_calls and answer.invalid_tool_calls
    assert not agg.tool_calls and len(agg.invalid_tool_calls) == 1


def test_strict_streams_an_answer_before_it_ends() -> None:
    model = GuardedChatModel(**FAST, policy="strict", max_new_tokens=16)
    chunks = list(model.stream("Write one sentence about the sea."))
    meta = chunks[-1].response_metadata["guardrail"]
    assert not meta["refused"]  # greedy: the embedded model answers this prompt
    assert meta["early_decision"] == "answer"
    assert len([c for c in chunks[:-1] if c.content]) >= 3
