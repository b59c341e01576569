"""Structured output: ``response_format`` and the JSON constraint that enforces it.

A call with ``response_format`` (``{"type": "json_schema", ...}`` as OpenAI and create_agent's
``ProviderStrategy`` send it, or ``{"type": "json_object"}``) is decoded under a JSON constraint
from its first token, so the answer's text *is* the JSON: nothing is parsed out of prose. The
same constraint keeps a forced tool call's JSON valid. Two engines implement it:

* ``llguidance`` (the ``grammar`` extra): the schema compiled to a grammar, a token mask over the
  whole vocabulary each step (:mod:`guardrail.decoding.constraints.grammar`);
* ``builtin``: the hand-written prefix automaton
  (:mod:`guardrail.decoding.constraints.tool_call`), used when llguidance is not installed, the
  backend cannot give it a tokenizer, or it cannot compile the schema.

``$GUARDRAIL_GRAMMAR`` (``auto``, the default, ``llguidance`` or ``builtin``) lets an operator
pin one; it is read per call, never set by a caller. Both engines bound strings that carry no
bound of their own, so the JSON closes within the token budget, and close objects that list
their ``properties`` to other keys unless the schema allows them.

With tools offered (``tool_choice="auto"``) the answer may instead be one tool call: the first
tokens may open a Hermes ``<tool_call>``, whose JSON is then kept valid for the bound tools, or
start the JSON answer (:class:`ToolCallOrJson`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from guardrail.adapters.base import HasGrammarTokenizer
from guardrail.decoding.constraints import MAX_STRING, TOOLS_KEY, ToolCallConstraint, string_limit
from guardrail.decoding.constraints import grammar as llg
from guardrail.decoding.processors import LogitsProcessor
from guardrail.errors import ConfigError

if TYPE_CHECKING:
    from guardrail.engine import Engine

GrammarEngine = Literal["auto", "llguidance", "builtin"]
GRAMMAR_ENV = "GUARDRAIL_GRAMMAR"
_ENGINES = ("auto", "llguidance", "builtin")


def grammar_engine() -> GrammarEngine:
    """The operator's choice of JSON engine (``$GUARDRAIL_GRAMMAR``, default ``auto``)."""
    value = os.environ.get(GRAMMAR_ENV, "auto").strip().lower() or "auto"
    if value not in _ENGINES:
        raise ConfigError(f"${GRAMMAR_ENV}: {value!r} is not allowed; use one of "
                          f"{', '.join(_ENGINES)}")
    return value  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# response_format


def response_schema(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema a ``response_format`` asks for; ``None`` for a plain answer.

    Allowed: ``None``, ``{"type": "text"}``, ``{"type": "json_object"}`` (any JSON object), and
    ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}}``.
    """
    if response_format is None:
        return None
    allowed = ("response_format: expected {'type': 'text'}, {'type': 'json_object'} or "
               "{'type': 'json_schema', 'json_schema': {'name': ..., 'schema': {...}}}")
    if not isinstance(response_format, Mapping):
        raise ConfigError(f"{allowed}, got {type(response_format).__name__}")
    kind = response_format.get("type")
    extra = set(response_format) - {"type", "json_schema"}
    if extra:
        raise ConfigError(f"response_format: unknown key(s) {', '.join(sorted(map(str, extra)))}")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise ConfigError(f"{allowed}, got type {kind!r}")
    spec = response_format.get("json_schema")
    if not isinstance(spec, Mapping):
        raise ConfigError("response_format.json_schema: expected {'name': ..., 'schema': {...}}")
    unknown = set(spec) - {"name", "description", "schema", "strict"}
    if unknown:
        raise ConfigError("response_format.json_schema: unknown key(s) "
                          f"{', '.join(sorted(map(str, unknown)))}")
    schema = spec.get("schema", {"type": "object"})
    if not isinstance(schema, Mapping):
        raise ConfigError("response_format.json_schema.schema: expected a JSON-Schema object")
    if schema.get("type", "object") != "object" and "anyOf" not in schema:
        raise ConfigError("response_format.json_schema.schema: the answer must be a JSON "
                          "object ({'type': 'object', ...})")
    return dict(schema)


# ---------------------------------------------------------------------------------------------
# choosing the engine


def closed_objects(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` where an object that lists ``properties`` and says nothing about
    others allows no others (what the built-in automaton does, and OpenAI's strict mode asks)."""

    def walk(node: Any) -> Any:
        if isinstance(node, Mapping):
            out = {k: walk(v) for k, v in node.items()}
            if isinstance(out.get("properties"), Mapping) and "additionalProperties" not in out:
                out["additionalProperties"] = False
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)  # type: ignore[no-any-return]


def tool_union(tools: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """``{"name": <tool>, "arguments": <its parameters>}`` for any of ``tools`` as one JSON
    schema, each tool's ``$defs`` moved to the root; ``None`` when two tools define the same
    ``$defs`` name differently."""
    defs: dict[str, Any] = {}
    branches = []
    for name, params in tools.items():
        p = dict(params)
        for k, v in (p.pop("$defs", None) or {}).items():
            if k in defs and defs[k] != v:
                return None
            defs[k] = v
        branches.append({
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": p},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })
    out: dict[str, Any] = {"anyOf": branches}
    if defs:
        out["$defs"] = defs
    return out


def _grammar_tokenizer(engine: Engine) -> Any | None:
    """The engine's llguidance tokenizer (built once), or ``None`` if it has none."""
    backend = engine.backend
    if not llg.available() or not isinstance(backend, HasGrammarTokenizer):
        return None

    def make() -> Any:
        try:
            return backend.grammar_tokenizer()
        except (ValueError, TypeError, RuntimeError, AttributeError):
            return None  # e.g. a slow (non-Rust) Hugging Face tokenizer

    return engine.cached("grammar_tokenizer", make)


def json_constraint(
    engine: Engine,
    schema: Mapping[str, Any],
    *,
    token_texts: Sequence[str],
    budget: int,
    opening: str = "",
    closing: str = "",
    string_cap: int | None = MAX_STRING,
    what: str = "schema",
    choice: GrammarEngine | None = None,
) -> LogitsProcessor:
    """The processor that keeps the answer a JSON value under ``schema``.

    ``opening`` is text already in the prompt that the JSON continues, ``closing`` is written
    once the JSON is complete, then the turn ends. ``string_cap`` bounds strings further than
    the budget does (forced calls: :data:`MAX_STRING`; ``None``: the budget alone). The engine
    is ``choice``, else ``$GUARDRAIL_GRAMMAR``; ``auto`` prefers llguidance."""
    choice = choice or grammar_engine()
    b = engine.backend
    end_id = min(b.end_of_turn_ids)
    limit = string_limit(schema, budget, cap=string_cap)

    def builtin() -> LogitsProcessor:
        return ToolCallConstraint(
            schema, token_texts, b.tokenize, b.detokenize, opening=opening, closing=closing,
            end_id=end_id, special_ids=b.end_of_turn_ids, budget=budget, max_string=limit,
        )

    if choice == "builtin":
        return builtin()
    tokenizer = _grammar_tokenizer(engine)
    full = tool_union(schema[TOOLS_KEY]) if TOOLS_KEY in schema else dict(schema)
    if tokenizer is None or full is None:
        if choice == "llguidance":
            why = ("llguidance is not installed (pip install 'guardrail-decoding[grammar]')"
                   if not llg.available() else
                   f"backend {getattr(b, 'name', '?')!r} gives it no tokenizer"
                   if tokenizer is None else "two tools define the same $defs name differently")
            raise ConfigError(f"${GRAMMAR_ENV}=llguidance: {why}")
        return builtin()
    try:
        grammar = llg.grammar_for_schema(llg.bound_values(closed_objects(full), limit))
        proc = llg.GrammarConstraint(
            tokenizer, grammar, vocab_size=b.vocab_size,
            closing_ids=[*(b.tokenize(closing) if closing else []), end_id],
            end_ids=b.end_of_turn_ids,
            opening_ids=b.tokenize(opening) if opening else (), what=what,
        )
    except (ConfigError, ValueError):
        if choice == "llguidance":
            raise
        return builtin()
    return proc


# ---------------------------------------------------------------------------------------------
# a tool call or the JSON answer


class ToolCallOrJson:
    """Either one tool call or the JSON answer, each kept valid.

    The first tokens may spell the call's opening ``tag`` (``"<tool_call>\\n"``, ending on a
    token boundary), after which ``call`` keeps the call's JSON valid for the bound tools and
    ends the turn; or they start the JSON answer, which ``answer`` constrains to the end.

    State comes from the generated ids: where the tag ended (if it did) is found again from
    them, and a shorter list than already seen (a new decode) starts over."""

    def __init__(self, answer: LogitsProcessor, call: LogitsProcessor,
                 token_texts: Sequence[str], detokenize: Any, tag: str) -> None:
        self.answer, self.call = answer, call
        self.texts = token_texts
        self.detokenize = detokenize
        self.tag = tag
        self.engine = getattr(answer, "engine", None)
        self._first = self._tag_tokens("")  # tokens that may open the tag (step 0)
        self._opened: int | None = None  # ids the tag took, once it is complete
        self._seen = 0

    def _tag_tokens(self, text: str) -> NDArray[np.bool_]:
        """Tokens after which ``text`` is still a prefix of the tag (or the whole tag)."""
        return np.array([bool(piece) and self.tag.startswith(text + piece)
                         for piece in self.texts], dtype=bool)

    def __call__(self, logits: NDArray[np.float32], generated_ids: Sequence[int], step: int,
                 answer_logits: NDArray[np.float32]) -> NDArray[np.float32]:
        if len(generated_ids) < self._seen:
            self._opened = None
        self._seen = len(generated_ids)
        if self._opened is None and generated_ids:
            text = self.detokenize(list(generated_ids))
            if text == self.tag:
                self._opened = len(generated_ids)
            elif self.tag.startswith(text):
                ok = self._tag_tokens(text)[: logits.size]
                out = np.where(ok, logits, -np.inf).astype(logits.dtype, copy=False)
                return out if np.isfinite(out).any() else logits
        if self._opened is not None:
            k = self._opened
            return self.call(logits, generated_ids[k:], step - k, answer_logits)
        as_json = self.answer(logits, generated_ids, step, answer_logits)
        if generated_ids:
            return as_json
        tag_ok = self._first[: logits.size]
        return np.where(tag_ok, logits, as_json).astype(logits.dtype, copy=False)


# ---------------------------------------------------------------------------------------------
# with_structured_output

Method = Literal["function_calling", "json_schema", "json_mode"]
_METHODS = ("function_calling", "json_schema", "json_mode")


def schema_of(schema: Any) -> tuple[str, dict[str, Any]]:
    """The name and JSON schema of a Pydantic class, TypedDict, OpenAI tool or JSON schema."""
    from langchain_core.utils.function_calling import convert_to_openai_tool

    try:
        fn = convert_to_openai_tool(schema)["function"]
    except (ValueError, TypeError) as e:
        raise ConfigError(f"schema: not a schema LangChain can describe ({e})") from None
    js = dict(fn.get("parameters") or {"type": "object", "properties": {}})
    if fn.get("description"):
        js.setdefault("description", fn["description"])
    return str(fn["name"]), js


def refusal_check(message: Any) -> Any:
    """Raise :class:`~guardrail.errors.RefusalError` when a structured answer is not the
    model's JSON: the policy answered instead (a request rule, or a refusal it replaced). The
    message is kept on the error as ``raw_message``."""
    from guardrail.errors import RefusalError

    meta = getattr(message, "response_metadata", {}).get("guardrail", {})
    if meta.get("finish_reason") == "rule" or meta.get("replaced"):
        err = RefusalError(f"policy {meta.get('policy')!r} answered instead of the model: "
                           f"{message.text[:200]!r}")
        err.raw_message = message  # type: ignore[attr-defined]
        raise err
    return message


def structured_runnable(
    model: Any, schema: Any, *, method: str, include_raw: bool, strict: bool | None,
) -> Any:
    """What ``GuardedChatModel.with_structured_output`` returns (see its docstring)."""
    from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
    from langchain_core.output_parsers.openai_tools import (
        JsonOutputKeyToolsParser,
        PydanticToolsParser,
    )
    from langchain_core.runnables import RunnableLambda
    from langchain_core.utils.pydantic import is_basemodel_subclass

    if method not in _METHODS:
        raise ConfigError(f"method: {method!r} is not allowed; use one of {', '.join(_METHODS)}")
    if strict is not None and not isinstance(strict, bool):
        raise ConfigError(f"strict: expected true, false or None, got {strict!r}")
    pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
    if method == "json_mode" and schema is None:
        rf: dict[str, Any] = {"type": "json_object"}
    else:  # (json_mode with a schema follows it too: the parser would demand it anyway)
        if schema is None:
            raise ConfigError(f"schema: method={method!r} needs a schema")
        name, js = schema_of(schema)
        if method == "function_calling":
            llm = model.bind_tools([schema], tool_choice=name, ls_structured_output_format={
                "kwargs": {"method": method, "strict": strict}, "schema": schema})
            parser: Any = (PydanticToolsParser(tools=[schema], first_tool_only=True) if pydantic
                           else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True))
            return _with_raw(llm, RunnableLambda(refusal_check) | parser, include_raw)
        rf = {"type": "json_schema", "json_schema": {"name": name, "schema": js}}
        if strict is not None:
            rf["json_schema"]["strict"] = strict
    llm = model.bind(response_format=rf, ls_structured_output_format={
        "kwargs": {"method": method, "strict": strict}, "schema": schema})
    parser = (PydanticOutputParser(pydantic_object=schema) if pydantic  # type: ignore[arg-type]
              else JsonOutputParser())
    return _with_raw(llm, RunnableLambda(refusal_check) | parser, include_raw)


def _with_raw(llm: Any, parser: Any, include_raw: bool) -> Any:
    """``llm | parser``, or with ``include_raw`` the ``{"raw", "parsed", "parsing_error"}``
    map LangChain's chat models return (a parsing error is reported, not raised)."""
    from operator import itemgetter

    from langchain_core.runnables import RunnableMap, RunnablePassthrough

    if not include_raw:
        return llm | parser
    assign = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser,
                                        parsing_error=lambda _: None)
    fallback = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=llm) | assign.with_fallbacks([fallback], exception_key="parsing_error")


__all__ = [
    "GRAMMAR_ENV", "GrammarEngine", "Method", "ToolCallOrJson", "closed_objects",
    "grammar_engine", "json_constraint", "refusal_check", "response_schema", "schema_of",
    "structured_runnable", "tool_union",
]
