"""The start-of-answer keyword detector (XSTest's rule), the default because it is fast and
measured: about 0.88 agreement with XSTest's human labels (docs/evaluation.md)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

from guardrail.errors import ConfigError
from guardrail.refusal.base import RefusalResult


@lru_cache(maxsize=1)
def _shipped_prefixes() -> tuple[str, ...]:
    text = resources.files("guardrail.data").joinpath("xstest_strmatch.txt").read_text("utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


XSTEST_PREFIXES: tuple[str, ...] = _shipped_prefixes()
"""XSTest's start-of-answer list (paul-rottger/exaggerated-safety, CC-BY-4.0), shipped in
``guardrail/data/xstest_strmatch.txt``."""


def string_match(response: str, prefixes: Sequence[str] = XSTEST_PREFIXES) -> RefusalResult:
    """XSTest's rule: a refusal iff the lower-cased, stripped answer starts with a prefix."""
    text = response.lower().strip()
    refused = text.startswith(tuple(p.lower() for p in prefixes))
    return RefusalResult(refused, "string_match", "full_refusal" if refused else "full_compliance")


class StringMatchDetector:
    """:func:`string_match` as a detector, with XSTest's list or the caller's own prefixes.

    The prompt is ignored: the rule looks at how the answer starts, nothing else.
    """

    name = "string_match"

    def __init__(self, prefixes: Sequence[str] | None = None):
        if prefixes is not None:
            if isinstance(prefixes, str):
                raise ConfigError("refusal.prefixes: give a list of strings, not one string")
            bad = [p for p in prefixes if not isinstance(p, str) or not p.strip()]
            if bad or not prefixes:
                raise ConfigError(
                    "refusal.prefixes: must be a non-empty list of non-blank strings, "
                    f"got {list(prefixes)!r}"
                )
        self.prefixes: tuple[str, ...] = (
            XSTEST_PREFIXES if prefixes is None else tuple(p.lower() for p in prefixes)
        )
        self._lower = tuple(p.lower() for p in self.prefixes)

    def __call__(self, prompt: str, response: str) -> RefusalResult:
        return string_match(response, self.prefixes)

    def detect_many(self, pairs: Sequence[tuple[str, str]]) -> list[RefusalResult]:
        return [self(p, r) for p, r in pairs]

    def decide_prefix(self, prompt: str, partial: str) -> RefusalResult | None:
        """The verdict of every answer that starts with ``partial``, or None while undecided.

        A refusal once the stripped start begins with a phrase (every longer answer does too);
        an answer once no phrase can still match (the start is neither a prefix of a phrase nor
        begun by one; trailing spaces are kept, since the answer may go on with a phrase that
        has a space in it). Exact, not a heuristic: ``self(prompt, whole)`` agrees."""
        start = partial.lower().lstrip()
        if not start:
            return None
        if start.rstrip().startswith(self._lower):
            return string_match(partial, self.prefixes)
        if any(p.startswith(start) or start.startswith(p) for p in self._lower):
            return None
        return string_match(partial, self.prefixes)

    def __repr__(self) -> str:
        return f"StringMatchDetector({len(self.prefixes)} prefixes)"
