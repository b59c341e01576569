"""OpenAI messages to LangChain messages, and LangChain answers back to OpenAI messages and deltas.

The request side is LangChain's own converter (``convert_to_messages`` reads OpenAI dicts,
assistant ``tool_calls`` and ``tool`` results included) after the body was validated, plus one
check it does not make: an earlier call's ``arguments`` must be a JSON object, or the call would
silently vanish from the history the model (and the Guard's request rules) see.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, convert_to_messages

from guardrail.langchain.call_stream import streamed_text
from guardrail.serve import protocol as p


def to_langchain(messages: Sequence[p.Message]) -> list[BaseMessage]:
    """Validated OpenAI messages as LangChain messages (400 naming a bad tool call)."""
    dicts: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        d = m.model_dump(exclude_none=True)
        if isinstance(m, p.AssistantMessage):
            d.setdefault("content", "")
            d.pop("refusal", None)
            for j, tc in enumerate(m.tool_calls or []):
                try:
                    args = json.loads(tc.function.arguments or "{}")
                except json.JSONDecodeError:
                    args = None
                if not isinstance(args, dict):
                    where = f"messages[{i}].tool_calls[{j}].function.arguments"
                    raise p.ApiError(400, f"{where}: must be a JSON object as a string",
                                     param=where)
        dicts.append(d)
    return convert_to_messages(dicts)


def _calls(tool_calls: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {"id": tc.get("id") or "", "type": "function",
         "function": {"name": tc["name"],
                      "arguments": json.dumps(tc.get("args") or {}, ensure_ascii=False)}}
        for tc in tool_calls
    ]


def invalid_calls(message: AIMessage | AIMessageChunk) -> list[dict[str, Any]]:
    """Tool calls the model wrote but that did not parse (reported in the ``guardrail``
    extension: OpenAI's shape has no place for them)."""
    return [{"name": c.get("name"), "arguments": streamed_text(str(c.get("args") or ""))
             .removeprefix("<tool_call>"), "error": c.get("error")}
            for c in message.invalid_tool_calls]


def tool_calls_of(message: AIMessage | AIMessageChunk, *, parallel: bool | None) -> list[Any]:
    """The answer's tool calls; only the first with ``parallel_tool_calls: false``."""
    calls = list(message.tool_calls)
    return calls[:1] if parallel is False else calls


def _arguments_text(raw: str) -> str:
    """The arguments part of a raw (unparsable, usually cut-off) call ``{"name": ...,
    "arguments": ...``: what a JSON answer cut off by the token budget looks like."""
    raw = streamed_text(raw).removeprefix("<tool_call>").strip()
    for key in ('"arguments":', '"parameters":'):
        at = raw.find(key)
        if at >= 0:
            return raw[at + len(key):].strip()
    return raw


def structured_content(message: AIMessage | AIMessageChunk) -> str:
    """The answer of a ``response_format`` request: the forced call's arguments as JSON text;
    when the model wrote no valid call (the budget ran out), the arguments as far as they got
    (finish reason ``length``), as OpenAI's JSON mode returns a cut-off answer."""
    if message.tool_calls:
        return json.dumps(message.tool_calls[0].get("args") or {}, ensure_ascii=False)
    for bad in message.invalid_tool_calls:
        if bad.get("args"):
            return _arguments_text(str(bad["args"]))
    return message.text


def to_openai_message(message: AIMessage, *, structured: bool,
                      parallel: bool | None = None) -> dict[str, Any]:
    """A finished answer as an OpenAI assistant message."""
    if structured:
        return {"role": "assistant", "content": structured_content(message), "refusal": None}
    calls = tool_calls_of(message, parallel=parallel)
    text = message.text
    out: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else ""),
                           "refusal": None}
    if calls:
        out["tool_calls"] = _calls(calls)
    reasoning = message.additional_kwargs.get("reasoning_content")
    if reasoning:  # a reasoning model's <think> section (the field vLLM and DeepSeek use)
        out["reasoning_content"] = reasoning
    return out


def to_delta(chunk: AIMessageChunk, *, structured: bool, parallel: bool | None = None,
             whole: AIMessageChunk | None = None) -> dict[str, Any]:
    """A streamed chunk as an OpenAI delta: its text, and with the last chunk the answer's
    parsed tool calls with indexes, taken from ``whole`` (every chunk merged, since the chat
    model streams a call's arguments piece by piece) so a call that did not parse is never
    sent as one.

    Text of a structured answer is never streamed (it is a forced call: none is released); its
    JSON comes with the last chunk."""
    delta: dict[str, Any] = {}
    last = chunk.chunk_position == "last"
    answer = chunk if whole is None else whole
    if structured:
        if last:
            delta["content"] = structured_content(answer)
        return delta
    if chunk.text:
        delta["content"] = chunk.text
    if reasoning := chunk.additional_kwargs.get("reasoning_content"):
        delta["reasoning_content"] = reasoning
    calls = tool_calls_of(answer, parallel=parallel) if last else []
    if calls:
        delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(_calls(calls))]
    return delta


def finish_reason(message: AIMessage | AIMessageChunk, *, structured: bool) -> str:
    """``stop``, ``length`` or ``tool_calls`` (a structured answer's call is its content)."""
    reason = str(message.response_metadata.get("finish_reason") or "stop")
    if structured and reason == "tool_calls":
        return "stop"
    return reason if reason in ("stop", "length", "tool_calls") else "stop"


__all__ = [
    "finish_reason", "invalid_calls", "structured_content", "to_delta", "to_langchain",
    "to_openai_message", "tool_calls_of",
]
