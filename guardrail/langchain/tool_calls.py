"""Tool calling for local chat templates: what a template does with tools, ``tool_choice``, and
parsing the model's output into LangChain tool calls.

Tools go to the model through its own chat template (the template's ``tools`` variable). Some
templates ignore tools (the embedded SmolLM2-135M-Instruct's does); for those, and only for
those, the tools are written into the system message in the Hermes/Qwen format
(:mod:`guardrail.langchain.messages`).

Two output formats are parsed into LangChain tool calls:

* Hermes/Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (one or more);
* Llama-3.1 JSON: the whole answer is ``{"name": ..., "parameters": {...}}`` (optionally after
  ``<|python_tag|>``); accepted only when the name is one of the bound tools, so a plain JSON
  answer is never mistaken for a call.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.messages.tool import InvalidToolCall, ToolCall

from guardrail.adapters.base import Backend
from guardrail.decoding.constraints.json_prefix import TOOLS_KEY
from guardrail.errors import ConfigError

ToolFormat = Literal["hermes", "llama3"]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
PYTHON_TAG = "<|python_tag|>"

#: The system-message text used when a template ignores ``tools`` (Qwen2.5's Hermes wording).
HERMES_TOOLS_SYSTEM = (
    "# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    "<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call>"
)

_DUMMY_TOOL = {
    "type": "function",
    "function": {
        "name": "guardrail_probe_tool",
        "description": "probe",
        "parameters": {"type": "object", "properties": {}},
    },
}


@dataclass(frozen=True)
class TemplateToolSupport:
    """What a chat template does with tools, found by rendering probes (never by guessing)."""

    tools: bool  # the template writes the ``tools`` it is given
    tool_calls: bool  # the template writes an assistant message's ``tool_calls``
    format: ToolFormat  # the call format its model is expected to produce


def probe_template(backend: Backend) -> TemplateToolSupport:
    """Render small probe conversations to see whether the template uses tools and tool calls."""
    user = [{"role": "user", "content": "u"}]
    try:
        with_tools = backend.render(user, tools=[_DUMMY_TOOL])
        tools_ok = "guardrail_probe_tool" in with_tools
    except Exception:  # noqa: BLE001 - a template may raise on anything it does not support
        tools_ok = False
    try:
        call = {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "guardrail_probe_tool", "arguments": {}},
                }
            ],
        }
        calls_ok = "guardrail_probe_tool" in backend.render([*user, call])
    except Exception:  # noqa: BLE001
        calls_ok = False
    template = backend.chat_template or ""
    fmt: ToolFormat = "hermes"
    if tools_ok and TOOL_CALL_OPEN not in template and (
        "<|python_tag|>" in template or "ipython" in template
    ):
        fmt = "llama3"
    return TemplateToolSupport(tools=tools_ok, tool_calls=calls_ok, format=fmt)


# ---------------------------------------------------------------------------------------------
# tool_choice


def tool_names(tools: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of OpenAI-format tools."""
    return [str(t.get("function", {}).get("name", t.get("name", ""))) for t in tools]


def normalise_tool_choice(
    tool_choice: Any, tools: Sequence[Mapping[str, Any]]
) -> tuple[Literal["auto", "none", "any"], str | None]:
    """``(mode, forced_name)`` for a LangChain/OpenAI ``tool_choice`` value.

    Allowed: ``None``/``"auto"``, ``"none"``/``False``, ``"any"``/``"required"``/``True``, a
    bound tool's name, or ``{"type": "function", "function": {"name": NAME}}``.
    """
    names = tool_names(tools)
    if tool_choice is None or tool_choice == "auto":
        return "auto", None
    if tool_choice is False or tool_choice == "none":
        return "none", None
    if tool_choice is True or tool_choice in ("any", "required"):
        return "any", names[0] if len(names) == 1 else None
    name: Any = None
    if isinstance(tool_choice, str):
        name = tool_choice
    elif isinstance(tool_choice, Mapping):
        name = tool_choice.get("function", {}).get("name") or tool_choice.get("name")
    if isinstance(name, str) and name in names:
        return "any", name
    raise ConfigError(
        f"tool_choice: {tool_choice!r} is not allowed; use 'auto', 'none', 'any', 'required', "
        f"True/False, or the name of a bound tool ({', '.join(names) or 'no tools bound'})"
    )


def forced_prefix(fmt: ToolFormat, name: str | None) -> str:
    """Text the answer is made to start with so that it is a tool call (of ``name`` if given)."""
    if fmt == "llama3":
        return '{"name": "' + (f'{name}", "parameters": ' if name else "")
    return f'{TOOL_CALL_OPEN}\n{{"name": "' + (f'{name}", "arguments": ' if name else "")


# ---------------------------------------------------------------------------------------------
# parsing


@dataclass
class ParsedOutput:
    """An answer split into its text and its tool calls."""

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)
    # every call, valid or not, in the order the answer wrote them (the stream's indexes)
    in_order: list[ToolCall | InvalidToolCall] = field(default_factory=list)


def new_call_id() -> str:
    """A tool call id in OpenAI's style."""
    return f"call_{uuid.uuid4().hex[:24]}"


def _to_call(obj: Any, raw: str) -> ToolCall | InvalidToolCall:
    if isinstance(obj, Mapping) and isinstance(obj.get("name"), str):
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):  # some models double-encode the arguments
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        if args is None:
            args = {}
        if isinstance(args, Mapping):
            return ToolCall(name=obj["name"], args=dict(args), id=new_call_id(), type="tool_call")
    name = obj.get("name") if isinstance(obj, Mapping) else None
    return InvalidToolCall(
        name=name if isinstance(name, str) else None,
        args=raw,
        id=new_call_id(),
        error="a tool call must be a JSON object with a string 'name' and an object "
        "'arguments' (or 'parameters')",
        type="invalid_tool_call",
    )


_DECODER = json.JSONDecoder()


def parse_tool_calls(text: str, names: Sequence[str] = ()) -> ParsedOutput:
    """Split ``text`` into content and tool calls (Hermes blocks, else a Llama-3.1 JSON call)."""
    if TOOL_CALL_OPEN in text:
        content_parts: list[str] = []
        calls: list[ToolCall] = []
        invalid: list[InvalidToolCall] = []
        in_order: list[ToolCall | InvalidToolCall] = []
        pos = 0
        while True:
            start = text.find(TOOL_CALL_OPEN, pos)
            if start < 0:
                content_parts.append(text[pos:])
                break
            content_parts.append(text[pos:start])
            body_start = start + len(TOOL_CALL_OPEN)
            end = text.find(TOOL_CALL_CLOSE, body_start)
            body = text[body_start:] if end < 0 else text[body_start:end]
            pos = len(text) if end < 0 else end + len(TOOL_CALL_CLOSE)
            raw = body.strip()
            try:
                obj, _ = _DECODER.raw_decode(raw)
            except json.JSONDecodeError as e:
                bad = InvalidToolCall(
                    name=None, args=raw, id=new_call_id(), error=f"invalid JSON: {e}",
                    type="invalid_tool_call",
                )
                invalid.append(bad)
                in_order.append(bad)
                continue
            call = _to_call(obj, raw)
            if call.get("type") == "tool_call":
                calls.append(call)  # type: ignore[arg-type]
            else:
                invalid.append(call)  # type: ignore[arg-type]
            in_order.append(call)
        content = "".join(content_parts).strip() if (calls or invalid) else text
        return ParsedOutput(content, calls, invalid, in_order)
    stripped = text.strip()
    if stripped.startswith(PYTHON_TAG):
        stripped = stripped[len(PYTHON_TAG) :].strip()
    if stripped.startswith("{") and names:
        try:
            obj, end = _DECODER.raw_decode(stripped)
        except json.JSONDecodeError:
            return ParsedOutput(text)
        if isinstance(obj, Mapping) and obj.get("name") in names:
            call = _to_call(obj, stripped[:end])
            rest = stripped[end:].strip()
            if call.get("type") == "tool_call":
                return ParsedOutput(rest, [call], [], [call])  # type: ignore[list-item]
            return ParsedOutput(rest, [], [call], [call])  # type: ignore[list-item]
    return ParsedOutput(text)


def safe_text_end(text: str, fmt: ToolFormat) -> int:
    """How much of a partial answer can be streamed as text: everything before a (possible)
    tool call. A Llama-3.1 call is a whole-answer JSON object, so an answer starting with ``{``
    is held back entirely."""
    if fmt == "llama3":
        s = text.lstrip()
        if s.startswith(("{", PYTHON_TAG)) or (s and PYTHON_TAG.startswith(s)) or not s:
            return 0
    idx = text.find(TOOL_CALL_OPEN)
    if idx >= 0:
        return idx
    # hold back a suffix that could be the start of "<tool_call>"
    for k in range(min(len(TOOL_CALL_OPEN) - 1, len(text)), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-k:]):
            return len(text) - k
    return len(text)


_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_tools(tools: Sequence[Any]) -> None:
    """Reject tools the model cannot be offered: not an OpenAI tool dict, a name it could not
    write, or parameters that are not a JSON-Schema object (``properties`` a mapping)."""
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise ConfigError(
                f"tools[{i}]: expected an OpenAI tool dict {{'type': 'function', 'function': "
                f"{{'name': ..., 'parameters': {{...}}}}}}, got {type(t).__name__}"
            )
        if not _NAME_RE.match(fn["name"]):
            raise ConfigError(f"tools[{i}]: name {fn['name']!r} is not allowed; use 1-64 "
                              "letters, digits, '_', '.', '-'")
        params = fn.get("parameters")
        if params is None:
            continue
        if not isinstance(params, Mapping) or params.get("type", "object") != "object":
            raise ConfigError(f"tools[{i}] ({fn['name']}): parameters must be a JSON-Schema "
                              "object ({'type': 'object', 'properties': {...}})")
        props = params.get("properties", {})
        if not isinstance(props, Mapping) or not all(isinstance(v, Mapping)
                                                     for v in props.values()):
            raise ConfigError(f"tools[{i}] ({fn['name']}): parameters.properties must map each "
                              "argument name to its schema")


# ---------------------------------------------------------------------------------------------
# forced calls
#
# A forced call's JSON is decoded under guardrail.decoding.constraints.ToolCallConstraint; this is
# the schema it follows.


def call_schema(tools: Sequence[Mapping[str, Any]], name: str | None) -> dict[str, Any]:
    """The schema the forced part of a call must follow: one tool's parameters, or (no name
    forced) the rest of ``{"name": ..., "arguments": ...}`` for any bound tool."""
    params = {
        n: dict(t.get("function", {}).get("parameters") or {"type": "object", "properties": {}})
        for n, t in zip(tool_names(tools), tools)
    }
    if name is not None:
        schema = params[name]
        schema.setdefault("type", "object")
        return schema
    return {"type": "object", TOOLS_KEY: params}


__all__ = [
    "HERMES_TOOLS_SYSTEM", "new_call_id", "PYTHON_TAG", "TOOL_CALL_CLOSE", "TOOL_CALL_OPEN", "ParsedOutput",
    "TemplateToolSupport", "ToolFormat", "call_schema", "check_tools", "forced_prefix",
    "normalise_tool_choice", "parse_tool_calls", "probe_template", "safe_text_end", "tool_names",
]
