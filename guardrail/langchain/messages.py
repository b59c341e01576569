"""LangChain messages as the dicts chat templates read, tools and tool history included.

For a template that ignores tools (:class:`~guardrail.langchain.tool_calls.TemplateToolSupport`)
the tools are written into the system message in the Hermes/Qwen format, earlier tool calls are
written back into the assistant turns as ``<tool_call>`` blocks and tool results as
``<tool_response>`` blocks, so the model still sees everything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import ToolCall

from guardrail.errors import ConfigError
from guardrail.langchain.tool_calls import (
    HERMES_TOOLS_SYSTEM,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TemplateToolSupport,
)
from guardrail.strategies.prompts import merge_system


def _blocks_text(content: str | list[Any], where: str) -> str:
    """The text of a message's content blocks; non-text blocks other than tool-use are refused."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Mapping):
            kind = block.get("type")
            if kind == "text":
                parts.append(str(block.get("text", "")))
            elif kind in ("tool_use", "tool_call", "function_call", "reasoning", "thinking"):
                continue  # carried by AIMessage.tool_calls, or not for the model
            else:
                raise ConfigError(
                    f"{where}: content block of type {kind!r} is not supported; local chat "
                    "templates take text only (allowed block types: 'text')"
                )
    return "".join(parts)


def _text_of(content: str | list[Any], where: str) -> str:
    """The text of a message's content, checked to be valid Unicode (a lone surrogate cannot be
    encoded for any tokenizer)."""
    text = _blocks_text(content, where)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfigError(f"{where}: text is not valid Unicode (a lone surrogate at character "
                          f"{e.start})") from None
    return text


def _call_dict(tc: ToolCall) -> dict[str, Any]:
    return {
        "id": tc.get("id") or "",
        "type": "function",
        "function": {"name": tc["name"], "arguments": dict(tc.get("args") or {})},
    }


def to_template_messages(
    messages: Sequence[BaseMessage], support: TemplateToolSupport | None = None
) -> list[dict[str, Any]]:
    """Turn LangChain messages into the OpenAI/HF dicts chat templates read.

    With ``support`` given and the template unable to write tool calls, calls and tool results
    are written into the text in the Hermes format instead (see the module docstring).
    """
    hermes_history = support is not None and not support.tool_calls
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}] ({type(m).__name__})"
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": _text_of(m.content, where)})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": _text_of(m.content, where)})
        elif isinstance(m, AIMessage):
            text = _text_of(m.content, where)
            calls = [_call_dict(tc) for tc in m.tool_calls]
            if calls and hermes_history:
                blocks = [
                    f"{TOOL_CALL_OPEN}\n"
                    + json.dumps(
                        {"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                        ensure_ascii=False,
                    )
                    + f"\n{TOOL_CALL_CLOSE}"
                    for c in calls
                ]
                text = "\n".join([text, *blocks]) if text else "\n".join(blocks)
                out.append({"role": "assistant", "content": text})
            elif calls:
                out.append({"role": "assistant", "content": text, "tool_calls": calls})
            else:
                out.append({"role": "assistant", "content": text})
        elif isinstance(m, ToolMessage):
            text = _text_of(m.content, where)
            if m.status == "error":
                text = f"Error: {text}"
            if hermes_history:
                out.append(
                    {"role": "user", "content": f"<tool_response>\n{text}\n</tool_response>"}
                )
            else:
                out.append(
                    {
                        "role": "tool",
                        "content": text,
                        "tool_call_id": m.tool_call_id,
                        **({"name": m.name} if m.name else {}),
                    }
                )
        elif isinstance(m, ChatMessage):
            out.append({"role": m.role, "content": _text_of(m.content, where)})
        else:
            raise ConfigError(
                f"{where}: unsupported message type; allowed: SystemMessage, HumanMessage, "
                "AIMessage, ToolMessage, ChatMessage"
            )
    return out


def tools_system_text(tools: Sequence[Mapping[str, Any]]) -> str:
    """The Hermes system-message block listing ``tools`` (OpenAI tool dicts)."""
    lines = "\n".join(json.dumps(dict(t), ensure_ascii=False) for t in tools)
    return HERMES_TOOLS_SYSTEM.format(tools=lines)


def add_tools_to_system(
    messages: list[dict[str, Any]], tools: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """``messages`` with the Hermes tool block in the (possibly new) leading system message."""
    return merge_system(messages, tools_system_text(tools), before=False)


__all__ = ["add_tools_to_system", "to_template_messages", "tools_system_text"]
