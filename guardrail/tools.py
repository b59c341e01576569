"""Tool calling for local chat templates: rendering tools and history, parsing tool calls.

Tools go to the model through its own chat template (the template's ``tools`` variable). Some
templates ignore tools (the embedded SmolLM2-135M-Instruct's does); for those, and only for
those, the tools are written into the system message in the Hermes/Qwen format, earlier tool
calls are written back into the assistant turns as ``<tool_call>`` blocks and tool results as
``<tool_response>`` blocks, so the model still sees everything.

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

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import InvalidToolCall, ToolCall

from guardrail.adapters.base import Backend
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
# LangChain messages -> template messages


def _text_of(content: str | list[Any], where: str) -> str:
    """The text of a message's content; non-text blocks other than tool-use are refused."""
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
    block = tools_system_text(tools)
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{out[0].get('content') or ''}\n\n{block}".lstrip()
        return out
    return [{"role": "system", "content": block}, *out]


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


def _new_id() -> str:
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
            return ToolCall(name=obj["name"], args=dict(args), id=_new_id(), type="tool_call")
    name = obj.get("name") if isinstance(obj, Mapping) else None
    return InvalidToolCall(
        name=name if isinstance(name, str) else None,
        args=raw,
        id=_new_id(),
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
                invalid.append(
                    InvalidToolCall(
                        name=None, args=raw, id=_new_id(), error=f"invalid JSON: {e}",
                        type="invalid_tool_call",
                    )
                )
                continue
            call = _to_call(obj, raw)
            if call.get("type") == "tool_call":
                calls.append(call)  # type: ignore[arg-type]
            else:
                invalid.append(call)  # type: ignore[arg-type]
        content = "".join(content_parts).strip() if (calls or invalid) else text
        return ParsedOutput(content, calls, invalid)
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
                return ParsedOutput(rest, [call])  # type: ignore[list-item]
            return ParsedOutput(rest, [], [call])  # type: ignore[list-item]
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


def check_tool_names(tools: Sequence[Mapping[str, Any]]) -> None:
    """Reject tools without a usable name (the model must be able to write it)."""
    for i, name in enumerate(tool_names(tools)):
        if not _NAME_RE.match(name):
            raise ConfigError(
                f"tools[{i}]: name {name!r} is not allowed; use 1-64 letters, digits, '_', '.', '-'"
            )


# ---------------------------------------------------------------------------------------------
# constrained tool-call arguments
#
# When a call is forced (tool_choice "any"/"required"/a name), the answer's JSON is decoded under
# a constraint: each step keeps only the most likely token that leaves the text a valid prefix of
# a call matching the tool's parameter schema, then closes the call and ends the turn. Small
# models then produce well-formed calls; the policy's rule still decides the logits (its trace is
# recorded as usual), the constraint only removes tokens that would break the JSON.


class _Incomplete(Exception):
    """The text ends before the value does (a valid prefix)."""


class _Invalid(Exception):
    """The text cannot be extended into a valid value."""


_MAX_WS = 1  # one space between tokens at most (stops runaway blank output)
#: Longest string value in a forced call, in characters (a non-ASCII one counts 3): a small model
#: repeating itself inside a string would otherwise spend the whole token budget there and never
#: close the call. Shorter when the token budget is small (see ``string_limit``).
MAX_STRING = 64


def _types(schema: Mapping[str, Any]) -> set[str]:
    """JSON types a (sub)schema allows; empty means any."""
    if "enum" in schema:
        return {"enum"}
    t = schema.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list):
        return {str(x) for x in t}
    out: set[str] = set()
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            out |= _types(sub) or {"any"}
    return out if "any" not in out else set()


def _subschema(schema: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    """The branch of an ``anyOf``/``oneOf`` schema that has type ``kind`` (else the schema)."""
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            if kind in _types(sub):
                return sub  # type: ignore[no-any-return]
    return schema


class _JsonPrefix:
    """Recursive-descent check of ``text`` against a JSON schema, tolerant of a cut-off end."""

    def __init__(self, text: str, defs: Mapping[str, Any], max_string: int = MAX_STRING):
        self.s = text
        self.i = 0
        self.defs = defs
        self.max_string = max_string

    def _peek(self) -> str:
        if self.i >= len(self.s):
            raise _Incomplete
        return self.s[self.i]

    def _ws(self) -> None:
        n = 0
        while self.i < len(self.s) and self.s[self.i] == " ":
            self.i += 1
            n += 1
        if n > _MAX_WS:
            raise _Invalid

    def _lit(self, word: str) -> None:
        rest = self.s[self.i : self.i + len(word)]
        if not word.startswith(rest):
            raise _Invalid
        self.i += len(rest)
        if len(rest) < len(word):
            raise _Incomplete

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return self.defs.get(ref.split("/")[-1], {})  # type: ignore[no-any-return]
        return schema

    def value(self, schema: Mapping[str, Any]) -> None:
        schema = self._resolve(schema)
        types = _types(schema)
        c = self._peek()
        if "enum" in types:
            self.string(enum=[str(v) for v in schema["enum"] if isinstance(v, str)])
        elif c == "{" and (not types or "object" in types):
            self.obj(_subschema(schema, "object"))
        elif c == "[" and (not types or "array" in types):
            self.array(_subschema(schema, "array"))
        elif c == '"' and (not types or "string" in types):
            self.string()
        elif (c == "-" or c.isdigit()) and (not types or types & {"integer", "number"}):
            self.number(integer=bool(types) and "number" not in types)
        elif c in "tf" and (not types or "boolean" in types):
            self._lit("true" if c == "t" else "false")
        elif c == "n" and (not types or "null" in types):
            self._lit("null")
        else:
            raise _Invalid

    def string(self, enum: Sequence[str] | None = None) -> str:
        if self._peek() != '"':
            raise _Invalid
        self.i += 1
        start = self.i
        cost = 0
        while True:
            if self.i >= len(self.s):
                if enum is not None and not any(e.startswith(self.s[start:]) for e in enum):
                    raise _Invalid
                raise _Incomplete
            c = self.s[self.i]
            if c == '"':
                value = self.s[start : self.i]
                if enum is not None and value not in enum:
                    raise _Invalid
                self.i += 1
                return value
            if enum is None:
                cost += 1 if c < "\u0080" else 3  # a non-ASCII character costs about a token
                if cost > self.max_string:
                    raise _Invalid  # only the closing quote may follow
            if c == "\\":
                if enum is not None:
                    raise _Invalid  # keys and enum values are written plainly
                if self.i + 1 >= len(self.s):
                    raise _Incomplete
                if self.s[self.i + 1] not in '"\\/bfnrt':  # no \u: keeps the check simple
                    raise _Invalid
                self.i += 2
                continue
            if c in "\n\r\t":
                raise _Invalid
            self.i += 1

    def number(self, *, integer: bool) -> None:
        start = self.i
        if self.s[self.i] == "-":
            self.i += 1
        allowed = "0123456789" if integer else "0123456789.eE+-"
        while self.i < len(self.s) and self.s[self.i] in allowed:
            self.i += 1
        body = self.s[start : self.i]
        if len(body) > 16:
            raise _Invalid  # a runaway number, not a value anyone meant
        if self.i >= len(self.s):
            raise _Incomplete  # a number is only finished by what follows it
        if body in ("-", "") or not body.lstrip("-")[:1].isdigit():
            raise _Invalid
        try:
            float(body)
        except ValueError:
            raise _Invalid from None

    def array(self, schema: Mapping[str, Any]) -> None:
        items = schema.get("items") or {}
        self.i += 1
        self._ws()
        if self._peek() == "]":
            self.i += 1
            return
        while True:
            self.value(items)
            self._ws()
            c = self._peek()
            self.i += 1
            if c == "]":
                return
            if c != ",":
                raise _Invalid
            self._ws()

    def obj(self, schema: Mapping[str, Any]) -> None:
        tools: Mapping[str, Any] | None = schema.get("x-guardrail-tools")
        props: Mapping[str, Any] = (
            {"name": {"enum": list(tools)}, "arguments": {}} if tools else
            schema.get("properties") or {}
        )
        required = list(props) if tools else list(schema.get("required") or [])
        # An object schema without "properties" is free-form; with an empty one, it is empty.
        free = (
            not tools and "properties" not in schema
            and schema.get("additionalProperties", True) is not False
        )
        seen: dict[str, Any] = {}
        self.i += 1
        self._ws()
        while True:
            c = self._peek()
            if c == "}":
                if any(r not in seen for r in required):
                    raise _Invalid
                self.i += 1
                return
            if seen:
                if c != ",":
                    raise _Invalid
                self.i += 1
                self._ws()
            left = [k for k in props if k not in seen]
            if tools:
                left = left[:1]  # "name" first, then "arguments"
            if not free and not left:
                raise _Invalid
            key = self.string(enum=None if free else left)
            self._ws()
            if self._peek() != ":":
                raise _Invalid
            self.i += 1
            self._ws()
            sub = props.get(key, {})
            if tools and key == "arguments":
                sub = tools.get(seen.get("name", ""), {})
            start = self.i
            self.value(sub)
            seen[key] = self.s[start : self.i].strip('"')
            self._ws()


def check_json_prefix(
    text: str, schema: Mapping[str, Any], max_string: int = MAX_STRING
) -> Literal["partial", "complete", "invalid"]:
    """Whether ``text`` is a cut-off, finished or impossible JSON value under ``schema``."""
    p = _JsonPrefix(text, schema.get("$defs") or {}, max_string)
    try:
        p._ws()
        p.value(schema)
    except _Incomplete:
        return "partial"
    except _Invalid:
        return "invalid"
    return "complete" if p.i == len(text) else "invalid"


def string_limit(schema: Mapping[str, Any], budget: int) -> int:
    """Longest string value that still lets every field fit in ``budget`` tokens (about 2.5
    characters a token, 8 tokens of keys and punctuation a field), between 8 and MAX_STRING."""
    tools = schema.get("x-guardrail-tools")
    fields = max(
        [len((p or {}).get("properties") or {}) for p in tools.values()] if tools
        else [len(schema.get("properties") or {})],
        default=0,
    )
    fields = max(fields, 1)
    return int(max(8, min(MAX_STRING, (budget - 8 * fields - 6) * 2.5 / fields)))


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
    return {"type": "object", "x-guardrail-tools": params}


class ConstrainedCallRule:
    """Wraps a decoding rule so the forced tool call's JSON stays valid (see above).

    ``opening`` is text already in the prompt that the constrained JSON continues (``'{"name":
    "'`` when the name is not forced); ``closing`` is written after the JSON is complete, then
    the turn ends with ``end_id``. The chosen token is the inner rule's most likely valid one;
    all others get ``-inf``, so greedy and sampled decoding pick the same token.

    ``token_texts`` holds each token's text alone, empty for tokens that are only part of a
    character (byte pieces of CJK text, emoji): those are checked by detokenizing them with the
    tokens before them, and accepted inside a string.
    """

    def __init__(
        self,
        inner: Any,
        schema: Mapping[str, Any],
        token_texts: Sequence[str],
        tokenize: Callable[[str], list[int]],
        detokenize: Callable[[Sequence[int]], str],
        *,
        opening: str,
        closing: str,
        end_id: int,
        special_ids: frozenset[int] = frozenset(),
        budget: int = 256,
        candidates: int = 256,
    ) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", "rule")
        self.schema = schema
        self.texts = token_texts
        self.detokenize = detokenize
        self.opening = opening
        self.ids: list[int] = []
        self.text = ""
        self.forced: list[int] = []
        self.closing_ids = [*tokenize(closing), end_id] if closing else [end_id]
        self.special = special_ids
        self.done = False
        self.candidates = candidates
        self.max_string = string_limit(schema, budget)

    @property
    def n_streams(self) -> int:
        return int(self.inner.n_streams)

    def streams_needed(self, step: int) -> int:
        return int(self.inner.streams_needed(step))

    def _valid(self, tok: int, exact: bool) -> bool:
        piece = self.texts[tok]
        if piece:
            text = self.opening + self.text + piece
        elif exact and tok not in self.special:
            # A byte piece: its text depends on the tokens before it. An unfinished character
            # stands in as "x", which only a string accepts.
            full = self.detokenize([*self.ids, tok])
            if not full.endswith("\ufffd") and full == self.text:
                return False  # the token adds nothing visible
            text = self.opening + full.rstrip("\ufffd") + ("x" if full.endswith("\ufffd") else "")
        else:
            return False
        return check_json_prefix(text, self.schema, self.max_string) != "invalid"

    def _choose(self, z: Any, plain: Any) -> int | None:
        """The best valid token: by the rule's logits among its top candidates, then (for
        tokens the rule masked out, e.g. AdaCD's plausibility cut) by the answer stream's."""
        import numpy as np

        k = min(self.candidates, z.size)
        top = np.argpartition(-z, k - 1)[:k]
        for tok in top[np.argsort(-z[top])]:
            if np.isfinite(z[tok]) and self._valid(int(tok), exact=True):
                return int(tok)
        for tok in np.argsort(-plain):
            if self._valid(int(tok), exact=False):
                return int(tok)
        return None

    def combine(self, logits: Any, step: int) -> tuple[Any, Any]:
        import numpy as np

        z, info = self.inner.combine(logits, step)
        if not self.done:
            tok = self._choose(z, logits[0])
            if tok is None:  # nothing can continue the JSON: close as best we can
                self.done = True
                self.forced = list(self.closing_ids)
            else:
                self.ids.append(tok)
                full = self.detokenize(self.ids)
                self.text = full if not full.endswith("\ufffd") else full.rstrip("\ufffd")
                state = check_json_prefix(self.opening + self.text, self.schema, self.max_string)
                if state == "complete" and not full.endswith("\ufffd"):
                    self.done = True
                    self.forced = list(self.closing_ids)
                out = np.full_like(z, -np.inf)
                out[tok] = 0.0
                return out, info
        tok = self.forced.pop(0) if self.forced else self.closing_ids[-1]
        out = np.full_like(z, -np.inf)
        out[tok] = 0.0
        return out, info
