"""The JSON-Schema prefix check and the forced tool call's processor, on a tiny fake vocabulary."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from numpy.typing import NDArray

from guardrail.decoding.constraints import (
    MAX_STRING,
    TOOLS_KEY,
    ToolCallConstraint,
    check_json_prefix,
    string_limit,
)
from guardrail.decoding.processors import LogitsProcessor

# ------------------------------------------------------------------ a tiny vocabulary

PIECES = ['{', '}', '"', ':', ',', ' ', 'a', 'b', '1', '2', 'x', '"a"', 'true', '\n', '  ']
BYTES = [p.encode() for p in PIECES] + [b"\xc3", b"\xa9"]  # "é" split into two byte pieces
EOT = len(BYTES)
V = EOT + 1
ID = {p: i for i, p in enumerate(PIECES)}
E1, E2 = ID["  "] + 1, ID["  "] + 2


def detokenize(ids: Sequence[int]) -> str:
    """Text of ``ids``; the end of turn is special and skipped, like a backend does."""
    return b"".join(BYTES[i] for i in ids if i != EOT).decode("utf-8", "replace")


def tokenize(text: str) -> list[int]:
    """Longest-match tokenization over the string pieces."""
    out: list[int] = []
    while text:
        best = max((i for i, p in enumerate(PIECES) if text.startswith(p)),
                   key=lambda i: len(PIECES[i]))
        out.append(best)
        text = text[len(PIECES[best]):]
    return out


#: Each token's text alone, empty for byte pieces (what the chat model's ``_token_texts`` gives).
TEXTS = ["" if "\ufffd" in t else t for t in (detokenize([i]) for i in range(V))]

AB = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
    "required": ["a"],
}


def constraint(schema: dict = AB, **kw: object) -> ToolCallConstraint:
    args: dict = {"opening": "", "closing": "}", "end_id": EOT, "special_ids": frozenset({EOT})}
    args.update(kw)
    return ToolCallConstraint(schema, TEXTS, tokenize, detokenize, **args)


def prefer(*tokens: str | int, base: float = 0.0) -> NDArray[np.float32]:
    """Logits ranking ``tokens`` first, in order (strings are pieces, ints are ids)."""
    z = np.full(V, base, dtype=np.float32)
    for rank, t in enumerate(tokens):
        z[ID[t] if isinstance(t, str) else t] = 100.0 - rank
    return z


def step(con: LogitsProcessor, ids: list[int], z: NDArray[np.float32],
         answer: NDArray[np.float32] | None = None) -> int:
    """One loop step: the processor's single allowed token, appended to ``ids``."""
    out = con(z, ids, len(ids), z if answer is None else answer)
    finite = np.flatnonzero(np.isfinite(out))
    assert finite.size == 1 and out[finite[0]] == 0.0
    ids.append(int(finite[0]))
    return int(finite[0])


# ------------------------------------------------------------------ check_json_prefix


@pytest.mark.parametrize(("text", "want"), [
    ("", "partial"),
    ("{", "partial"),
    ('{"a": 1', "partial"),  # a number is only finished by what follows it
    ('{"a": 1}', "complete"),
    ('{"a": 1, "b": "x"}', "complete"),
    ('{"b": "x"}', "invalid"),  # "a" is required
    ('{"a": 1.5}', "invalid"),  # integer only
    ('{"a": 1, "a": 2}', "invalid"),  # no key twice
    ('{"c": 1}', "invalid"),  # not a property
    ('{"a":  1}', "invalid"),  # one space at most
    ('{"a": 1, "b": "x\ny"}', "invalid"),  # raw newline in a string
    ('{"a": 1, "b": "x\\ny"}', "complete"),
    ('{"a": 1, "b": "\\u00e9"}', "invalid"),  # no \u escapes
    ('{"a": 1}x', "invalid"),
    ('{"a": 12345678901234567', "invalid"),  # runaway number
])
def test_json_prefix_states(text: str, want: str) -> None:
    assert check_json_prefix(text, AB) == want


def test_json_prefix_types_unions_and_refs() -> None:
    schema = {
        "type": "object",
        "properties": {
            "flag": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "unit": {"enum": ["c", "f"]},
            "at": {"$ref": "#/$defs/Point"},
        },
        "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}}},
    }
    assert check_json_prefix('{"flag": tr', schema) == "partial"
    assert check_json_prefix('{"flag": nul', schema) == "partial"
    assert check_json_prefix('{"flag": 1', schema) == "invalid"
    assert check_json_prefix('{"tags": ["a", "b"]}', schema) == "complete"
    assert check_json_prefix('{"tags": ["a", 1', schema) == "invalid"
    assert check_json_prefix('{"unit": "f"}', schema) == "complete"
    assert check_json_prefix('{"unit": "k', schema) == "invalid"
    assert check_json_prefix('{"at": {"x": -2.5e3}}', schema) == "complete"
    assert check_json_prefix('{"at": {"y', schema) == "invalid"
    assert check_json_prefix('{"anything": {"goes": [1]}}', {"type": "object"}) == "complete"
    closed = {"type": "object", "additionalProperties": False}
    assert check_json_prefix('{"a', closed) == "invalid"


def test_json_prefix_tool_union_and_string_cap() -> None:
    union = {"type": "object", TOOLS_KEY: {"f": AB, "g": {"type": "object", "properties": {}}}}
    assert check_json_prefix('{"name": "', union) == "partial"
    assert check_json_prefix('{"arguments', union) == "invalid"  # the name comes first
    assert check_json_prefix('{"name": "h', union) == "invalid"
    assert check_json_prefix('{"name": "g", "arguments": {}}', union) == "complete"
    assert check_json_prefix('{"name": "f", "arguments": {"a": 1}}', union) == "complete"
    assert check_json_prefix('{"name": "f", "arguments": {"b": "x"}}', union) == "invalid"
    long = '{"a": 1, "b": "' + "x" * MAX_STRING
    assert check_json_prefix(long, AB) == "partial"
    assert check_json_prefix(long + "x", AB) == "invalid"
    assert check_json_prefix(long[:-8], AB, max_string=MAX_STRING - 9) == "invalid"
    assert check_json_prefix('{"a": 1, "b": "' + "é" * 21, AB) == "partial"  # 3 apiece
    assert check_json_prefix('{"a": 1, "b": "' + "é" * 22, AB) == "invalid"


def test_string_limit_follows_the_budget() -> None:
    assert string_limit(AB, 256) == MAX_STRING
    assert string_limit(AB, 40) == int((40 - 16 - 6) * 2.5 / 2)
    assert string_limit(AB, 10) == 8  # never below 8
    union = {TOOLS_KEY: {"f": AB, "g": {"properties": {}}}}
    assert string_limit(union, 40) == string_limit(AB, 40)  # the widest tool counts
    assert string_limit({"type": "object"}, 20) == int((20 - 8 - 6) * 2.5)


# ------------------------------------------------------------------ ToolCallConstraint


def test_is_a_processor_and_keeps_its_inputs() -> None:
    con = constraint()
    assert isinstance(con, LogitsProcessor)
    z = prefer("{")
    before = z.copy()
    con(z, [], 0, z)
    np.testing.assert_array_equal(z, before)


def test_best_valid_token_then_closing_and_end_of_turn() -> None:
    con = constraint()
    ids: list[int] = []
    # The rule prefers an invalid token each step; the best valid one is taken instead.
    assert step(con, ids, prefer("}", "{")) == ID["{"]
    assert step(con, ids, prefer("a", "1", '"a"')) == ID['"a"']
    assert step(con, ids, prefer(":")) == ID[":"]
    assert step(con, ids, prefer("x", " ")) == ID[" "]
    assert step(con, ids, prefer("  ", "1")) == ID["1"]  # one space at most
    assert step(con, ids, prefer("}")) == ID["}"]  # '{"a": 1}' is complete
    # Then the closing ("}") and the end of turn are forced, whatever the logits say ...
    assert step(con, ids, prefer("a")) == ID["}"]
    assert step(con, ids, prefer("a")) == EOT
    # ... and the end of turn again if the loop asks once more.
    assert step(con, ids, prefer("a")) == EOT
    assert detokenize(ids) == '{"a": 1}}'


def test_masked_tokens_fall_back_to_the_answer_stream_order() -> None:
    con = constraint()
    ids: list[int] = []
    step(con, ids, prefer("{"))
    # The rule kept only invalid tokens (e.g. a plausibility cut): the answer stream's
    # ranking picks among the rest, skipping its own invalid favourites.
    rule = np.full(V, -np.inf, dtype=np.float32)
    rule[ID["}"]] = 5.0  # "a" is required: "}" is invalid
    assert step(con, ids, rule, answer=prefer("x", "b", '"a"', '"')) == ID['"a"']


def test_candidates_limit_the_rule_ranking() -> None:
    con = constraint(candidates=2)
    ids: list[int] = []
    z = prefer("x", "b", "{")  # "{" is third: outside the rule's two candidates
    # Only "{" and one leading space can start the value: the answer order decides ...
    assert step(con, ids, z, answer=prefer('"', " ", "{")) == ID[" "]
    # ... unless the rule's own valid choice is among its candidates.
    con = constraint(candidates=3)
    assert step(con, [], z, answer=prefer('"', " ", "{")) == ID["{"]


def test_closes_at_once_when_nothing_can_continue() -> None:
    con = constraint(closing="", schema={"type": "object", "properties": {}})
    ids: list[int] = []
    step(con, ids, prefer("{"))
    step(con, ids, prefer("}"))  # '{}' is complete
    assert step(con, ids, prefer("a")) == EOT  # no closing text: the end of turn alone
    # A vocabulary that can only write "{": after it, with the rule allowing nothing, no token
    # continues the JSON, so the call is closed as it stands (closing, then end of turn).
    texts = ["{" if t == "{" else "" for t in TEXTS]
    stuck = ToolCallConstraint(AB, texts, tokenize, detokenize, opening="", closing="}",
                               end_id=EOT, special_ids=frozenset({EOT}))
    ids = []
    step(stuck, ids, prefer("{"))
    masked = np.full(V, -np.inf, dtype=np.float32)
    assert step(stuck, ids, masked, answer=prefer("a")) == ID["}"]
    assert step(stuck, ids, prefer('"')) == EOT
    assert detokenize(ids) == "{}"


def test_byte_pieces_only_inside_strings() -> None:
    con = constraint()
    ids: list[int] = []
    for piece in ("{", '"a"', ":", "1", ","):
        step(con, ids, prefer(piece))
    assert step(con, ids, prefer(E1, " ")) == ID[" "]  # half a character outside a string
    con = constraint()
    ids = []
    for piece in ("{", '"a"', ":", "1", ",", " ", '"', "b", '"', ":", '"'):
        step(con, ids, prefer(piece))
    assert step(con, ids, prefer(E1)) == E1  # half a character, inside a string: allowed
    assert step(con, ids, prefer(E2)) == E2
    assert step(con, ids, prefer('"')) == ID['"']
    assert step(con, ids, prefer("}")) == ID["}"]
    assert detokenize(ids) == '{"a":1, "b":"é"}'
    assert step(con, ids, prefer("a")) == ID["}"]


def test_state_follows_the_generated_ids() -> None:
    con = constraint()
    # The loop sampled "{" and '"a"' although this object was never asked at step 1: its state
    # comes from the ids it is given.
    ids = [ID["{"], ID['"a"']]
    assert step(con, ids, prefer("}", ":")) == ID[":"]
    # A new decode of the same request (shorter ids) starts from scratch.
    assert step(con, [], prefer(":", "{")) == ID["{"]


def test_no_name_forced_writes_the_call_from_its_opening() -> None:
    union = {"type": "object", TOOLS_KEY: {"a": AB, "b": {"type": "object"}}}
    con = constraint(union, opening='{"name": "', closing="")
    ids: list[int] = []
    assert step(con, ids, prefer("x", "a")) == ID["a"]  # only bound names
    assert step(con, ids, prefer('"a"', '"')) == ID['"']
    out = [step(con, ids, prefer(*p)) for p in ((",", " "), ("a", '"'), ("b", "a"))]
    assert [PIECES[t] for t in out] == [",", '"', "a"]  # then "arguments", and nothing else
    assert check_json_prefix('{"name": "' + detokenize(ids), union) == "partial"


#: Greedy choices of the pre-move ``ConstrainedCallRule`` (then in guardrail/tools.py) on seeded random
#: logits over this vocabulary: the processor must make exactly the same ones.
PINNED: dict[tuple[int, int], list[int]] = {
    (0, 256): [5, 0, 11, 3, 9, 4, 2, 7, 2, 5, 3, 5, 11, 1, 1, 17],
    (0, 3): [5, 0, 2, 6, 2, 3, 5, 8, 9, 8, 8, 1, 1, 17],
    (1, 256): [5, 0, 5, 11, 5, 3, 8, 8, 1, 1, 17],
    (1, 3): [0, 5, 11, 3, 8, 5, 4, 2, 7, 2, 3, 5, 2, 15, 3, 2, 5, 1, 1, 17],
    (2, 256): [5, 0, 11, 5, 3, 9, 5, 4, 5, 2, 7, 2, 3, 5, 11, 1, 1, 17],
    (2, 3): [5, 0, 2, 7, 2, 3, 11, 4, 5, 11, 5, 3, 8, 8, 8, 9, 1, 1, 17],
    (3, 256): [0, 5, 2, 6, 2, 5, 3, 9, 9, 5, 1, 1, 17],
    (3, 3): [0, 11, 3, 8, 9, 4, 2, 7, 2, 3, 2, 0, 16, 8, 14, 1, 7, 6, 3, 2, 5, 1, 1, 17],
    (4, 256): [0, 11, 3, 8, 5, 1, 1, 17],
    (4, 3): [0, 5, 11, 3, 5, 8, 4, 5, 2, 7, 2, 5, 3, 5, 11, 5, 1, 1, 17],
    (5, 256): [
        0, 2, 6, 2, 3, 8, 4, 5, 2, 7, 2, 5, 3, 2, 7, 3, 7, 12, 14, 1, 4, 9, 3, 5, 8, 15, 10, 7,
        16, 8, 1, 17,
    ],
    (5, 3): [5, 0, 11, 3, 8, 9, 8, 5, 4, 5, 2, 7, 2, 5, 3, 11, 5, 1, 1, 17],
}


@pytest.mark.parametrize(("seed", "candidates"), sorted(PINNED))
def test_same_choices_as_the_rule_it_replaces(seed: int, candidates: int) -> None:
    con = constraint(candidates=candidates, budget=40)
    rng = np.random.default_rng(seed)
    ids: list[int] = []
    while len(ids) < 40 and (not ids or ids[-1] != EOT):
        z = rng.normal(0, 3, V).astype(np.float32)
        z[rng.random(V) < 0.3] = -np.inf  # the rule masks some tokens
        answer = rng.normal(0, 3, V).astype(np.float32)
        out = con(z, ids, len(ids), answer)
        ids.append(int(np.argmax(out)))
    assert ids == PINNED[(seed, candidates)]
