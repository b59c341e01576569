"""The forced tool call as a logits processor: keep the call's JSON valid for the tool's schema.

When a call is forced (tool_choice ``"any"``/``"required"``/a name), the prompt already ends with
the call's opening (:func:`guardrail.langchain.tool_calls.forced_prefix`) and the answer's JSON is decoded under
this constraint: each step keeps only the most likely token that leaves the text a valid prefix of
a call matching the schema (:func:`~guardrail.decoding.constraints.json_prefix.check_json_prefix`),
then closes the call and ends the turn. Small models then produce well-formed calls. The policy's
rule still decides the logits (its trace is recorded as usual); the constraint only removes tokens
that would break the JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from guardrail.decoding.constraints.json_prefix import check_json_prefix, string_limit


def only(tok: int, like: NDArray[np.float32]) -> NDArray[np.float32]:
    """Logits shaped like ``like`` that allow ``tok`` alone (0 there, ``-inf`` elsewhere)."""
    out = np.full_like(like, -np.inf)
    out[tok] = 0.0
    return out


class ToolCallConstraint:
    """A per-request :class:`~guardrail.decoding.processors.LogitsProcessor` for a forced call.

    ``opening`` is text already in the prompt that the constrained JSON continues (``'{"name":
    "'`` when the name is not forced); ``closing`` is written after the JSON is complete, then
    the turn ends with ``end_id``. Each step the chosen token is the rule's most likely valid one
    among its top ``candidates``; failing that (every such token invalid, or masked by the rule,
    e.g. AdaCD's plausibility cut), the most likely valid one by the answer stream's own logits
    (the loop's ``answer_logits``). All other tokens get ``-inf``, so greedy and sampled decoding
    pick the same token. When no token can continue the JSON, the call is closed as it stands.

    ``token_texts`` holds each token's text alone, empty for tokens that are only part of a
    character (byte pieces of CJK text, emoji): those are checked by detokenizing them with the
    tokens before them, and accepted inside a string.

    State: the ids of the JSON so far and the step the closing began, both derived from the
    ``generated_ids`` the loop passes (not from what this object returned), so the constraint
    follows what was actually sampled. A shorter ``generated_ids`` than already seen means a new
    decode of the request and resets it.

    ``max_string`` overrides the longest string value (default: :func:`string_limit` of the
    budget).
    """

    engine = "builtin"  # which JSON engine this is (reported in the answer's metadata)

    def __init__(
        self,
        schema: Mapping[str, Any],
        token_texts: Sequence[str],
        tokenize: Callable[[str], list[int]],
        detokenize: Callable[[Sequence[int]], str],
        *,
        opening: str,
        closing: str,
        end_id: int,
        special_ids: Collection[int] = frozenset(),
        budget: int = 256,
        candidates: int = 256,
        max_string: int | None = None,
    ) -> None:
        self.schema = schema
        self.texts = token_texts
        self.detokenize = detokenize
        self.opening = opening
        self.closing_ids = [*tokenize(closing), end_id] if closing else [end_id]
        self.special = frozenset(special_ids)
        self.candidates = candidates
        self.max_string = string_limit(schema, budget) if max_string is None else max_string
        self._reset()

    def _reset(self) -> None:
        self.ids: list[int] = []  # the JSON's tokens so far
        self.text = ""  # their text, an unfinished character at the end dropped
        self.seen = 0  # generated ids already taken into account
        self.closed_at: int | None = None  # step the closing tokens start at, once JSON is done

    def _advance(self, generated_ids: Sequence[int]) -> None:
        """Take the ids sampled since the last call into the state."""
        if len(generated_ids) < self.seen:
            self._reset()
        for i in range(self.seen, len(generated_ids)):
            if self.closed_at is not None:
                break
            self.ids.append(int(generated_ids[i]))
            full = self.detokenize(self.ids)
            self.text = full if not full.endswith("\ufffd") else full.rstrip("\ufffd")
            state = check_json_prefix(self.opening + self.text, self.schema, self.max_string)
            if state == "complete" and not full.endswith("\ufffd"):
                self.closed_at = i + 1
        self.seen = len(generated_ids)

    def _valid(self, tok: int, exact: bool) -> bool:
        """Whether ``tok`` keeps the JSON a valid prefix; ``exact`` also checks byte pieces."""
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

    def _choose(self, z: NDArray[np.float32], plain: NDArray[np.float32]) -> int | None:
        """The best valid token: by the rule's logits among its top candidates, then (for
        tokens the rule masked out, e.g. AdaCD's plausibility cut) by the answer stream's."""
        k = min(self.candidates, z.size)
        top = np.argpartition(-z, k - 1)[:k]
        for tok in top[np.argsort(-z[top])]:
            if np.isfinite(z[tok]) and self._valid(int(tok), exact=True):
                return int(tok)
        for tok in np.argsort(-plain):
            if self._valid(int(tok), exact=False):
                return int(tok)
        return None

    def __call__(
        self,
        logits: NDArray[np.float32],
        generated_ids: Sequence[int],
        step: int,
        answer_logits: NDArray[np.float32],
    ) -> NDArray[np.float32]:
        """Allow one token: the best valid JSON token, or the next closing token."""
        self._advance(generated_ids)
        if self.closed_at is None:
            tok = self._choose(logits, answer_logits)
            if tok is not None:
                return only(tok, logits)
            self.closed_at = len(generated_ids)  # nothing can continue the JSON: close it now
        k = len(generated_ids) - self.closed_at
        return only(self.closing_ids[k] if k < len(self.closing_ids) else self.closing_ids[-1],
                     logits)
