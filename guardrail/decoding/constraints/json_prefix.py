"""A JSON-Schema prefix check: can this text still become a value that matches the schema?

The forced tool call (:mod:`guardrail.decoding.constraints.tool_call`) asks this after every
candidate token, so the check is a small hand-written recursive descent that tolerates a cut-off
end rather than a full validator. It covers what tool parameter schemas use: objects with
``properties``/``required``/``additionalProperties: false``, arrays with ``items``, strings,
integers, numbers, booleans, null, ``enum`` of strings, ``anyOf``/``oneOf`` unions and local
``$ref`` to ``#/$defs/...``. It is deliberately stricter than JSON where that keeps small models
on track: at most one space between tokens, no ``\\u`` escapes, strings at most ``max_string``
characters, numbers at most 16 characters.

A schema may instead carry ``TOOLS_KEY`` (``{tool name: parameter schema}``): it then stands for
``{"name": <one of the tools>, "arguments": <that tool's parameters>}``, keys in that order, the
shape of a call whose tool is not forced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

#: Schema key of a tool-union schema: ``{tool name: that tool's parameter schema}``.
TOOLS_KEY = "x-guardrail-tools"


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
        tools: Mapping[str, Any] | None = schema.get(TOOLS_KEY)
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


def string_limit(schema: Mapping[str, Any], budget: int, cap: int | None = MAX_STRING) -> int:
    """Longest string value that still lets every field fit in ``budget`` tokens (about 2.5
    characters a token, 8 tokens of keys and punctuation a field), at least 8 and at most
    ``cap`` (``None``: the budget alone decides)."""
    tools = schema.get(TOOLS_KEY)
    fields = max(
        [len((p or {}).get("properties") or {}) for p in tools.values()] if tools
        else [len(schema.get("properties") or {})],
        default=0,
    )
    fields = max(fields, 1)
    fit = (budget - 8 * fields - 6) * 2.5 / fields
    return int(max(8, fit if cap is None else min(cap, fit)))
