"""The llguidance constraint, the JSON-engine choice and ``response_format`` checks, on a tiny
byte vocabulary (no model: llguidance gets a tokenizer made from the same pieces)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from guardrail.decoding.constraints import TOOLS_KEY, ToolCallConstraint
from guardrail.decoding.constraints import grammar as llg
from guardrail.errors import ConfigError
from guardrail.langchain.structured import (
    ToolCallOrJson,
    closed_objects,
    json_constraint,
    response_schema,
    tool_union,
)

llguidance = pytest.importorskip("llguidance")

PIECES = ['{', '}', '"', ':', ',', ' ', 'a', 'b', '1', '2', 'x', '"a"', 'true', '\n', '  ',
          'name', 'arguments', ': ', ', ', '<', 'tool', '>', '\\u00e9']
BYTES = [p.encode() for p in PIECES]
EOT = len(BYTES)
V = EOT + 1
ID = {p: i for i, p in enumerate(PIECES)}


def tokenize(text: str) -> list[int]:
    """Longest match over the pieces."""
    out: list[int] = []
    while text:
        best = max((i for i, p in enumerate(PIECES) if text.startswith(p)),
                   key=lambda i: len(PIECES[i]))
        out.append(best)
        text = text[len(PIECES[best]):]
    return out


def detokenize(ids: Sequence[int]) -> str:
    return b"".join(BYTES[i] for i in ids if i != EOT).decode("utf-8", "replace")


TEXTS = [detokenize([i]) for i in range(V)]


class _Pieces:
    """What llguidance's TokenizerWrapper reads: bytes per token, end token, a tokenizer."""

    eos_token_id = EOT
    bos_token_id = None
    tokens = [*BYTES, b"\xff<eot>"]
    special_token_ids = [EOT]

    def __call__(self, s: bytes | str) -> list[int]:
        return tokenize(s.decode() if isinstance(s, bytes) else s)


TOKENIZER = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Pieces()))


def grammar_constraint(schema: dict[str, Any], *, opening: str = "", closing: str = "",
                       max_string: int = 64) -> llg.GrammarConstraint:
    grammar = llg.grammar_for_schema(llg.bound_values(closed_objects(schema), max_string))
    return llg.GrammarConstraint(
        TOKENIZER, grammar, vocab_size=V, closing_ids=[*tokenize(closing), EOT],
        end_ids={EOT}, opening_ids=tokenize(opening),
    )


def decode(proc: Any, prefer: Sequence[str], n: int = 40,
           rule: Any = None) -> tuple[str, list[int]]:
    """Greedy decoding where the 'model' ranks tokens in the order ``prefer`` (then the
    rest), through ``proc``; ``rule`` may turn the logits first (returns the logits)."""
    base = np.full(V, -10.0, dtype=np.float32)
    for rank, piece in enumerate(prefer):
        base[ID[piece] if piece in ID else EOT] = 10.0 - rank
    ids: list[int] = []
    for step in range(n):
        z = base if rule is None else rule(base)
        out = proc(z, ids, step, base)
        ids.append(int(np.argmax(out)))
        if ids[-1] == EOT:
            break
    return detokenize(ids), ids


AB = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
      "required": ["a"]}


def test_mask_keeps_a_junk_preferring_model_inside_the_schema() -> None:
    text, ids = decode(grammar_constraint(AB), ["x", "\n", "  ", "1", "}"])
    assert ids[-1] == EOT  # integers are bounded too, so "1111..." stops at 15 digits
    value = json.loads(text)
    assert set(value) <= {"a", "b"} and isinstance(value["a"], int)


def test_minimum_is_followed_where_the_automaton_ignores_it() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 20}},
              "required": ["a"]}
    prefer = ["{", '"a"', ": ", "}", "1", "2"]  # the model wants {"a": 1}
    text, _ = decode(grammar_constraint(schema), prefer)
    assert json.loads(text)["a"] >= 20
    builtin = ToolCallConstraint(schema, TEXTS, tokenize, detokenize, opening="", closing="",
                                 end_id=EOT, special_ids={EOT})
    loose, _ = decode(builtin, prefer)
    assert json.loads(loose)["a"] == 1  # the automaton's documented gap


def test_unicode_escape_is_allowed_in_strings() -> None:
    schema = {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}
    text, _ = decode(grammar_constraint(schema, max_string=3),
                     ["\\u00e9", "{", '"', "b", ": ", "}"], n=30)
    assert json.loads(text)["b"] == "ééé"


def test_strings_are_bounded_so_the_json_closes() -> None:
    schema = {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}
    text, ids = decode(grammar_constraint(schema, max_string=5), ["x", "{", '"', "b", ": "],
                       n=30)
    assert ids[-1] == EOT and json.loads(text)["b"] == "xxxxx"


def test_opening_in_the_prompt_and_a_tool_union() -> None:
    tools = {"ab": AB, "bb": {"type": "object", "properties": {}}}
    proc = grammar_constraint(tool_union(tools), opening='{"name": "')  # type: ignore[arg-type]
    text, _ = decode(proc, ["a", "b", '"', "}", ", ", "arguments", ": ", "{", '"a"', "2"])
    call = json.loads('{"name": "' + text)
    assert call["name"] == "ab" and isinstance(call["arguments"]["a"], int)


def test_closing_is_written_after_a_forced_calls_arguments() -> None:
    proc = grammar_constraint(AB, closing="}")
    text, ids = decode(proc, ["{", '"a"', ": ", "}", "1"])
    assert text.endswith("}}") and ids[-1] == EOT
    assert json.loads(text[:-1]) == {"a": 1}


def test_a_rule_that_masked_every_allowed_token_falls_back_to_the_answer_stream() -> None:
    def cut(z: NDArray[np.float32]) -> NDArray[np.float32]:
        out = np.full_like(z, -np.inf)
        out[ID["x"]] = 1.0  # the rule keeps only a token the grammar forbids at the start
        return out

    text, _ = decode(grammar_constraint(AB), ["{", '"a"', ": ", "}", "2"], rule=cut)
    assert json.loads(text) == {"a": 2}


def test_a_new_decode_restarts_the_matcher() -> None:
    proc = grammar_constraint(AB)
    first, _ = decode(proc, ["{", '"a"', ": ", "}", "1"])
    again, _ = decode(proc, ["{", '"a"', ": ", "}", "2"])
    assert json.loads(first) == {"a": 1} and json.loads(again) == {"a": 2}


# ------------------------------------------------------------------ choosing the engine


class _Backend:
    name = "pieces"
    vocab_size = V
    end_of_turn_ids = frozenset({EOT})

    def __init__(self, has_tokenizer: bool = True) -> None:
        self.has = has_tokenizer

    def tokenize(self, text: str) -> list[int]:
        return tokenize(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return detokenize(ids)

    def grammar_tokenizer(self) -> Any:
        if not self.has:
            raise ValueError("Only fast tokenizers are supported")
        return TOKENIZER


class _Engine:
    def __init__(self, backend: _Backend) -> None:
        self.backend = backend
        self._cache: dict[str, Any] = {}

    def cached(self, key: str, make: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


def _choose(engine: _Engine, schema: dict[str, Any] = AB, **kw: Any) -> Any:
    return json_constraint(engine, schema, token_texts=TEXTS, budget=64, **kw)  # type: ignore[arg-type]


def test_auto_prefers_llguidance_and_falls_back_to_the_automaton(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GUARDRAIL_GRAMMAR", raising=False)
    assert _choose(_Engine(_Backend())).engine == "llguidance"
    assert _choose(_Engine(_Backend(has_tokenizer=False))).engine == "builtin"
    monkeypatch.setattr(llg, "available", lambda: False)
    assert _choose(_Engine(_Backend())).engine == "builtin"


def test_the_operator_pins_the_engine_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDRAIL_GRAMMAR", "builtin")
    assert isinstance(_choose(_Engine(_Backend())), ToolCallConstraint)
    monkeypatch.setenv("GUARDRAIL_GRAMMAR", "llguidance")
    with pytest.raises(ConfigError, match="GUARDRAIL_GRAMMAR=llguidance: backend 'pieces'"):
        _choose(_Engine(_Backend(has_tokenizer=False)))
    monkeypatch.setattr(llg, "available", lambda: False)
    with pytest.raises(ConfigError, match="not installed"):
        _choose(_Engine(_Backend()))
    monkeypatch.setenv("GUARDRAIL_GRAMMAR", "fast")
    with pytest.raises(ConfigError, match=r"\$GUARDRAIL_GRAMMAR: 'fast' is not allowed"):
        _choose(_Engine(_Backend()))


def test_a_schema_llguidance_cannot_compile_falls_back_or_fails_by_choice() -> None:
    bad = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    assert _choose(_Engine(_Backend()), bad, choice="auto").engine == "builtin"
    with pytest.raises(ConfigError, match="schema"):
        _choose(_Engine(_Backend()), bad, choice="llguidance")


def test_tool_union_moves_defs_to_the_root_and_refuses_clashes() -> None:
    a = {"type": "object", "properties": {"p": {"$ref": "#/$defs/P"}},
         "$defs": {"P": {"type": "integer"}}}
    b = {"type": "object", "properties": {"p": {"$ref": "#/$defs/P"}},
         "$defs": {"P": {"type": "string"}}}
    union = tool_union({"a": a})
    assert union is not None and union["$defs"] == {"P": {"type": "integer"}}
    assert "$defs" not in union["anyOf"][0]["properties"]["arguments"]
    assert tool_union({"a": a, "b": b}) is None
    assert _choose(_Engine(_Backend()), {"type": "object", TOOLS_KEY: {"a": a, "b": b}},
                   opening='{"name": "').engine == "builtin"


def test_bounds_and_closed_objects_leave_bounded_schemas_alone() -> None:
    schema = {"type": "object", "properties": {
        "s": {"type": "string"}, "e": {"type": "string", "enum": ["x"]},
        "p": {"type": "string", "pattern": "^a+$"}, "o": {"type": "object"},
        "f": {"type": "object", "properties": {}, "additionalProperties": True}}}
    out = llg.bound_values(closed_objects(schema), 7)
    assert out["properties"]["s"]["maxLength"] == 7
    ints = llg.bound_values({"type": "object", "properties": {
        "i": {"type": "integer"}, "r": {"type": "integer", "minimum": 3}}}, 7)["properties"]
    assert ints["i"]["maximum"] == llg.MAX_INTEGER and "maximum" not in ints["r"]
    assert "maxLength" not in out["properties"]["e"] and "maxLength" not in out["properties"]["p"]
    assert out["additionalProperties"] is False
    free = out["properties"]["o"]  # free-form stays free, its keys and values bounded
    assert free["patternProperties"] == {"^.{1,7}$": {"$ref": f"#/$defs/{llg.ANY_VALUE}"}}
    assert out["properties"]["f"]["additionalProperties"] is False  # True: bounded free-form
    assert out["properties"]["f"]["patternProperties"] == free["patternProperties"]
    assert "maxLength" not in schema["properties"]["s"]  # a copy


# ------------------------------------------------------------------ response_format


@pytest.mark.parametrize(("value", "message"), [
    ("json", "expected"),
    ({"type": "xml"}, "got type 'xml'"),
    ({"type": "json_schema"}, r"response_format.json_schema: expected"),
    ({"type": "json_schema", "json_schema": {"name": "a", "schema": {}, "strct": True}},
     "unknown key"),
    ({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "array"}}},
     "must be a JSON object"),
    ({"type": "json_object", "schema": {}}, "unknown key"),
])
def test_bad_response_formats_name_what_is_wrong(value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        response_schema(value)


def test_response_formats() -> None:
    assert response_schema(None) is None and response_schema({"type": "text"}) is None
    assert response_schema({"type": "json_object"}) == {"type": "object"}
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": AB, "strict": True}}
    assert response_schema(rf) == AB


def test_tool_call_or_json_offers_both_at_the_first_token_then_follows_one() -> None:
    def both() -> ToolCallOrJson:
        call = grammar_constraint(tool_union({"ab": AB}))  # type: ignore[arg-type]
        return ToolCallOrJson(grammar_constraint(AB), call, TEXTS, detokenize, "<tool>")

    proc = both()
    z = np.zeros(V, dtype=np.float32)
    first = proc(z, [], 0, z)
    assert set(np.flatnonzero(np.isfinite(first))) == {ID["{"], ID[" "], ID["<"]}
    mid = proc(z, [ID["<"]], 1, z)
    assert set(np.flatnonzero(np.isfinite(mid))) == {ID["tool"]}
    opened = proc(z, tokenize("<tool>"), 3, z)
    assert set(np.flatnonzero(np.isfinite(opened))) == {ID["{"], ID[" "]}  # the call begins
    text, _ = decode(both(), ["<", "tool", ">", "{", '"', "name", ": ", "a", "b", "}", ", ",
                              "arguments", '"a"', "2"])
    assert text.startswith("<tool>")
    assert json.loads(text[len("<tool>"):]) == {"name": "ab", "arguments": {"a": 2}}
    answer, _ = decode(both(), ["{", '"a"', ": ", "}", "1"])
    assert json.loads(answer) == {"a": 1}


def test_a_free_form_object_is_bounded_in_keys_values_and_depth() -> None:
    # A model that always opens another object or repeats a letter still closes the JSON.
    proc = grammar_constraint({"type": "object"}, max_string=3)
    text, ids = decode(proc, ["x", "{", '"', ": "], n=80)
    assert ids[-1] == EOT
    value, depth = json.loads(text), 0
    while isinstance(value, dict):
        (key, value), = value.items()
        assert len(key) <= 3
        depth += 1
    assert depth == 1 + llg.ANY_DEPTH and value == "xxx"
