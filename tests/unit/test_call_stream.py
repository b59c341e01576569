"""Tool calls streamed while their JSON decodes (guardrail/langchain/call_stream.py): the merged
chunks give ``invoke``'s calls, ids included; a call that does not parse stays invalid."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessageChunk, ToolCallChunk
from langchain_core.utils.json import parse_partial_json

from guardrail.langchain.call_stream import CallStream, JsonScan, streamed_text
from guardrail.langchain.tool_calls import ParsedOutput, parse_tool_calls
from guardrail.serve.translate import structured_content

NAMES = ["get_weather", "add"]


def pieces(text: str, size: int = 3) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def run(
    text: str, fmt: str = "hermes", size: int = 3
) -> tuple[list[list[ToolCallChunk]], AIMessageChunk, ParsedOutput]:
    """Feed ``text`` piece by piece; the chunks of each piece, and everything merged."""
    stream = CallStream(fmt, NAMES)  # type: ignore[arg-type]
    seen: list[list[ToolCallChunk]] = []
    answer = ""
    for p in pieces(text, size):
        answer += p
        seen.append(stream.update(answer))
    parsed = parse_tool_calls(answer, NAMES)
    seen.append(stream.finish(answer, parsed))
    merged = AIMessageChunk(content="")
    for chunks in seen:
        merged = merged + AIMessageChunk(content="", tool_call_chunks=chunks)
    return seen, merged, parsed


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par\\"is", "days": [1, 2]}}\n</tool_call>'


def test_a_call_opens_with_its_name_and_streams_its_arguments() -> None:
    seen, merged, parsed = run(CALL)
    opened = next(i for i, c in enumerate(seen) if c)
    first = seen[opened][0]
    assert first["name"] == "get_weather" and first["index"] == 0 and first["id"]
    later = [c for chunks in seen[opened + 1 : -1] for c in chunks]
    assert len(later) > 3 and all(c["name"] is None for c in later)  # arguments, piece by piece
    assert merged.tool_calls == parsed.tool_calls  # same name, args and id as invoke
    assert parsed.tool_calls[0]["args"] == {"city": 'Par"is', "days": [1, 2]}
    assert not merged.invalid_tool_calls


def test_two_calls_stream_under_their_own_indexes() -> None:
    two = CALL + '\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    seen, merged, parsed = run(two)
    assert {c["index"] for chunks in seen for c in chunks} == {0, 1}
    assert merged.tool_calls == parsed.tool_calls and len(parsed.tool_calls) == 2


def test_a_call_cut_off_is_invalid_in_the_merged_stream_as_in_invoke() -> None:
    cut = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'
    seen, merged, parsed = run(cut)
    assert any(seen[:-1])  # it was streamed while it decoded
    assert parsed.invalid_tool_calls and not parsed.tool_calls
    assert merged.tool_calls == [] and len(merged.invalid_tool_calls) == 1
    assert merged.invalid_tool_calls[0]["id"] == parsed.invalid_tool_calls[0]["id"]
    # what the model wrote is still there (the server reports it, and a cut-off JSON answer)
    assert streamed_text(merged.invalid_tool_calls[0]["args"]) == '{"city": "Par'
    assert structured_content(merged) == '{"city": "Par'


def test_complete_arguments_in_a_malformed_block_are_invalid_too() -> None:
    bad = '<tool_call>\n{"name": "add", "arguments": {"a": 1}\n</tool_call>'  # no closing brace
    _, merged, parsed = run(bad)
    assert parsed.invalid_tool_calls and merged.tool_calls == []


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "unknown", "arguments": {"a": 1}}\n</tool_call>',  # not bound
        '<tool_call>\n{"arguments": {"a": 1}, "name": "add"}\n</tool_call>',  # arguments first
        '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 1}"}\n</tool_call>',  # a string
    ],
)
def test_other_shapes_arrive_whole_in_the_last_chunk(text: str) -> None:
    seen, merged, parsed = run(text)
    assert not any(seen[:-1])
    assert merged.tool_calls == parsed.tool_calls and len(seen[-1]) == 1


def test_llama3_json_calls_stream_too() -> None:
    text = '{"name": "add", "parameters": {"a": 1, "b": 2}}'
    seen, merged, parsed = run(text, fmt="llama3")
    assert any(seen[:-1]) and merged.tool_calls == parsed.tool_calls
    assert parsed.tool_calls[0]["args"] == {"a": 1, "b": 2}


def test_token_sized_pieces_give_the_same_calls() -> None:
    for size in (1, 2, 7, len(CALL)):
        _, merged, parsed = run(CALL, size=size)
        assert merged.tool_calls == parsed.tool_calls


SAMPLE = json.dumps({"a": 'x\\"y', "b": [1, {"c": [True, None]}], "d": -1.5e3, "e": "}]"})


def test_the_unparseable_end_never_parses_for_any_cut() -> None:
    for cut in range(1, len(SAMPLE) + 1):
        scan = JsonScan()
        scan.feed(SAMPLE[:cut])
        broken = SAMPLE[:cut] + scan.unparseable_end()
        try:
            value = parse_partial_json(broken)
        except Exception:  # noqa: BLE001 - what LangChain does with it: an invalid call
            value = None
        assert not isinstance(value, dict), broken


@settings(max_examples=60, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda kids: st.lists(kids, max_size=3)
                    | st.dictionaries(st.text(max_size=4), kids, max_size=3), max_leaves=8))
def test_the_scan_finds_where_an_object_ends(value: object) -> None:
    text = json.dumps({"v": value})
    scan = JsonScan()
    assert scan.feed(text + ', "after": 1}') == len(text)

