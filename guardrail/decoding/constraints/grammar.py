"""A grammar engine as a loop processor: llguidance masks the rule's logits to a JSON schema.

llguidance (the optional ``grammar`` extra) compiles a JSON schema into a grammar and, for the
text decoded so far, computes the set of tokens that keep it a valid prefix: a bitmask over the
whole vocabulary in tens of microseconds, where the built-in automaton
(:mod:`~guardrail.decoding.constraints.tool_call`) tries candidates one by one. The mask covers
the full JSON-Schema vocabulary llguidance implements (``minimum``, ``pattern``, ``\\u`` escapes,
``$ref``, ...), so schemas the automaton approximates are followed exactly.

The processor only removes tokens: the policy's rule still decides how likely each allowed token
is, so AdaCD's contrast, the gate and the experts act inside the grammar as they do outside it.
When the rule has masked every allowed token (AdaCD's plausibility cut can), the answer stream's
own logits order the allowed tokens instead, as the automaton does.

Separators are fixed (``", "`` and ``": "``, one optional space before the value and no other
whitespace, as in the automaton), which keeps small models from spending their budget on blank
space and makes the forced call's opening text (already in the prompt) part of the same
grammar.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from guardrail.decoding.constraints.tool_call import only
from guardrail.errors import ConfigError

#: The JSON layout every grammar uses: compact, with the spaces ``json.dumps`` writes.
JSON_LAYOUT: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    "json_allow_general_unicode_escapes": True,  # ``\u00e9`` in bounded strings too
}

#: Keywords after which a string schema is already bounded (no ``maxLength`` is added).
_BOUNDED = ("maxLength", "enum", "const", "pattern", "format")
#: Keywords after which an integer schema is already bounded.
_RANGED = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "const")


def available() -> bool:
    """Whether the llguidance extra is installed (``pip install 'guardrail-decoding[grammar]'``)."""
    return importlib.util.find_spec("llguidance") is not None


#: Largest integer magnitude a bounded schema allows: 15 digits (with a sign, the automaton's
#: 16-character number limit).
MAX_INTEGER = 10**15 - 1


#: ``$defs`` name of the bounded "any JSON value" that free-form positions are given, and how
#: deep its arrays and objects may nest.
ANY_VALUE = "guardrail_any_value"
ANY_DEPTH = 3
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contains",
               "propertyNames", "unevaluatedProperties", "unevaluatedItems")
#: Keys that say nothing about a value's shape: a schema of only these allows any value.
_ANNOTATIONS = {"description", "title", "default", "examples", "$comment", "deprecated"}


def bound_values(schema: Mapping[str, Any], max_length: int) -> dict[str, Any]:
    """A copy of ``schema`` where every string without a bound gets ``maxLength``, every
    integer without a range gets ``|n| <= MAX_INTEGER``, and every free-form position (a
    schema that allows any value, a free-form object's keys and values, an array without
    ``items``) allows any JSON value whose strings (keys included) and integers are bounded the
    same way.

    A small model repeating itself inside a string (or a number) would otherwise spend the
    whole token budget there and never close the JSON; the limits are the ones the automaton
    applies (:func:`~guardrail.decoding.constraints.json_prefix.string_limit`, 16-character
    numbers), so both engines cut the same values."""
    any_ref = {"$ref": f"#/$defs/{ANY_VALUE}"}
    key_pattern = f"^.{{1,{max_length}}}$"
    used = False

    def free(node: Mapping[str, Any]) -> bool:
        return set(node) <= _ANNOTATIONS

    def walk(node: Any) -> Any:
        nonlocal used
        if not isinstance(node, Mapping):
            return node
        if free(node):
            used = True
            return {**node, **any_ref}
        out = dict(node)
        for key in _SCHEMA_MAPS:
            if isinstance(out.get(key), Mapping):
                out[key] = {k: walk(v) for k, v in out[key].items()}
        for key in _SCHEMA_LISTS:
            if isinstance(out.get(key), list):
                out[key] = [walk(v) for v in out[key]]
        for key in _SCHEMA_ONE:
            if isinstance(out.get(key), Mapping):
                out[key] = walk(out[key])
        t = out.get("type")
        types = set(t) if isinstance(t, list) else {t}
        if "string" in types and not any(k in out for k in _BOUNDED):
            out["maxLength"] = max_length
        if "integer" in types and not any(k in out for k in _RANGED):
            out["minimum"], out["maximum"] = -MAX_INTEGER, MAX_INTEGER
        if ("object" in types and not out.get("properties") and "patternProperties" not in out
                and out.get("additionalProperties", True) is True):
            used = True  # free-form: bounded keys (llguidance has no propertyNames), any values
            out["patternProperties"] = {key_pattern: any_ref}
            out["additionalProperties"] = False
        if "array" in types and "items" not in out and "prefixItems" not in out:
            used = True
            out["items"] = any_ref
        return out

    result: dict[str, Any] = walk(copy.deepcopy(dict(schema)))
    if used:
        defs = result.setdefault("$defs", {})
        scalars = [
            {"type": "string", "maxLength": max_length},
            {"type": "integer", "minimum": -MAX_INTEGER, "maximum": MAX_INTEGER},
            {"type": "number"}, {"type": "boolean"}, {"type": "null"},
        ]
        for depth in range(ANY_DEPTH, -1, -1):  # a free value nests ANY_DEPTH levels at most
            name = ANY_VALUE if depth == 0 else f"{ANY_VALUE}_{depth}"
            inner = {"$ref": f"#/$defs/{ANY_VALUE}_{depth + 1}"}
            defs[name] = {"anyOf": scalars if depth == ANY_DEPTH else [
                *scalars, {"type": "array", "items": inner},
                {"type": "object", "patternProperties": {key_pattern: inner},
                 "additionalProperties": False},
            ]}
    return result


def grammar_for_schema(schema: Mapping[str, Any]) -> str:
    """The llguidance grammar of one optional space, then a JSON value matching ``schema``
    (compact layout). The space is what the automaton allows too: after a prompt that ends in
    ``": "`` a model often writes ``' {"'`` as one token, and forbidding it would push it off
    its own tokenization."""
    import json

    import llguidance

    value = {**schema, "x-guidance": {**dict(schema.get("x-guidance") or {}), **JSON_LAYOUT}}
    lark = 'start: " "? value\nvalue: %json ' + json.dumps(value, ensure_ascii=False)
    return str(llguidance.LLMatcher.grammar_from_lark(lark))


class GrammarConstraint:
    """A per-request :class:`~guardrail.decoding.processors.LogitsProcessor` backed by an
    llguidance matcher.

    ``opening_ids`` are tokens already in the prompt that the grammar's text starts with (the
    ``{"name": "`` of a call whose tool is not forced): the matcher consumes them first. When
    the grammar is complete (it allows nothing but ending), ``closing_ids`` are written (a
    forced call's ``}``), the last of them ending the turn; a matcher that failed closes the
    same way.

    State comes from the ``generated_ids`` the loop passes: each new id is consumed; a shorter
    list than already seen means a new decode and restarts the matcher.
    """

    engine = "llguidance"  # which JSON engine this is (reported in the answer's metadata)

    def __init__(
        self,
        tokenizer: Any,
        grammar: str,
        *,
        vocab_size: int,
        closing_ids: Sequence[int],
        end_ids: Collection[int] = (),
        opening_ids: Sequence[int] = (),
        what: str = "grammar",
    ) -> None:
        import llguidance
        import llguidance.numpy as llg_np

        self._fill = llg_np.fill_next_token_bitmask
        self.matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if self.matcher.is_error():  # ``what`` names the schema's source in the error
            raise ConfigError(f"{what}: the grammar engine cannot follow this schema "
                              f"({self.matcher.get_error()})")
        self.vocab_size = vocab_size
        self.closing_ids = list(closing_ids)
        self.end_ids = frozenset(end_ids) | {self.closing_ids[-1]}
        self.opening = list(opening_ids)
        self._mask = llg_np.allocate_token_bitmask(1, tokenizer.vocab_size)
        self._start()

    def _start(self) -> None:
        self.matcher.reset()
        self.seen = 0
        self.closed_at: int | None = None  # step the closing tokens start at
        if self.opening and not self.matcher.consume_tokens(self.opening):
            raise ConfigError(f"grammar: the prompt's opening tokens do not start the grammar "
                              f"({self.matcher.get_error()})")

    def _advance(self, generated_ids: Sequence[int]) -> None:
        if len(generated_ids) < self.seen:
            self._start()
        for i in range(self.seen, len(generated_ids)):
            if self.closed_at is not None:
                break
            tok = int(generated_ids[i])
            if tok == self.closing_ids[0] and self.matcher.is_accepting():
                self.closed_at = i  # the model ended a complete value itself
            elif not self.matcher.consume_token(tok):
                self.closed_at = i + 1  # not the grammar's (a new decode): close after it
        self.seen = len(generated_ids)

    def allowed(self) -> NDArray[np.bool_]:
        """The tokens the grammar allows next (``[vocab_size]``), end tokens left out."""
        self._fill(self.matcher, self._mask)
        bits = np.unpackbits(self._mask[0].view(np.uint8), bitorder="little").astype(bool)
        out = np.zeros(self.vocab_size, dtype=bool)
        n = min(self.vocab_size, bits.size)
        out[:n] = bits[:n]
        out[[i for i in self.end_ids if i < self.vocab_size]] = False
        return out

    def __call__(
        self,
        logits: NDArray[np.float32],
        generated_ids: Sequence[int],
        step: int,
        answer_logits: NDArray[np.float32],
    ) -> NDArray[np.float32]:
        """The rule's logits where the grammar allows, ``-inf`` elsewhere; then the closing."""
        self._advance(generated_ids)
        if self.closed_at is None:
            ok = self.allowed()
            if ok.any():
                out = np.where(ok, logits, -np.inf).astype(logits.dtype, copy=False)
                if not np.isfinite(out).any():  # the rule masked every allowed token
                    out = np.where(ok, answer_logits, -np.inf).astype(logits.dtype, copy=False)
                if self.matcher.is_accepting():  # complete, yet it could go on: may also end
                    out[self.closing_ids[0]] = logits[self.closing_ids[0]]
                if np.isfinite(out).any():
                    return out
            self.closed_at = len(generated_ids)  # complete, or nothing can continue it
        k = len(generated_ids) - self.closed_at
        return only(self.closing_ids[min(k, len(self.closing_ids) - 1)], logits)


__all__ = [
    "ANY_VALUE", "JSON_LAYOUT", "MAX_INTEGER", "GrammarConstraint", "available", "bound_values",
    "grammar_for_schema",
]
