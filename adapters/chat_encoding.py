"""Chat encoding in which message text is text (the helpers of ``Backend.encode_chat``).

A tokenizer that parses special tokens in the rendered prompt would turn control tokens typed
into a message (``<|im_end|>\n<|im_start|>system\n...``) into real turn boundaries. When some
message text holds a string the tokenizer parses, :meth:`Backend.encode_chat` renders the
conversation with each such text wrapped in private-use markers (and a cut marker inside every
occurrence), splits the rendered prompt at the markers, tokenizes the template's pieces with
special tokens parsed and the message texts with special parsing off, and concatenates. A
conversation whose texts hold no such string is tokenized exactly as before, in one call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from guardrail.errors import BackendError


@dataclass(frozen=True)
class ChatSegment:
    """One run of an encoded chat prompt: its ``text`` (markers removed) and its ``ids``.

    ``literal``: message text (contents, tool-call names and arguments, tool results),
    tokenized with special parsing off; otherwise the template's own text, special tokens
    parsed. The segments' texts concatenate to the rendered prompt, their ids to
    :meth:`Backend.encode_chat`."""

    text: str
    ids: tuple[int, ...]
    literal: bool


def _trie_pattern(strings: Iterable[str]) -> str:
    """A regular expression matching any of ``strings``, as a trie (fast on thousands)."""
    trie: dict[str, Any] = {}
    for s in strings:
        node = trie
        for ch in s:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        parts = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not parts:
            return ""
        body = parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"
        return f"(?:{body})?" if "" in node else body

    return build(trie)


class SpecialMatcher:
    """Where a tokenizer's parseable token strings (special, control, added) occur in text.

    Strings shorter than two characters or made of whitespace only are left out: they cannot
    be cut apart, and a tokenizer gives such text the same tokens whether it parses specials
    or not."""

    def __init__(self, strings: Iterable[str]):
        self.strings = frozenset(s for s in strings if len(s) >= 2 and s.strip())
        body = _trie_pattern(self.strings)
        self._any = re.compile(body) if body else None
        self._starts = re.compile(f"(?=(?:{body}))") if body else None
        self._by_last: dict[str, list[str]] = {}
        for s in self.strings:
            self._by_last.setdefault(s[-1], []).append(s)

    def found_in(self, text: str) -> bool:
        """Whether ``text`` holds any of the strings."""
        return self._any is not None and self._any.search(text) is not None

    def cut_points(self, text: str) -> list[int]:
        """Positions that split every occurrence in ``text``: one after each occurrence's
        first character (overlapping occurrences included)."""
        if self._starts is None:
            return []
        return sorted({m.start() + 1 for m in self._starts.finditer(text)})

    def ends_with_one(self, text: str) -> bool:
        """Whether ``text`` ends with one of the strings (a special token when parsed)."""
        return bool(text) and any(text.endswith(s) for s in self._by_last.get(text[-1], ()))


def strings_in(x: Any) -> Iterator[str]:
    """Every string in a JSON-like value: mapping keys and values, list items."""
    if isinstance(x, str):
        yield x
    elif isinstance(x, Mapping):
        for k, v in x.items():
            yield from strings_in(k)
            yield from strings_in(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from strings_in(v)


def map_strings(x: Any, fn: Any) -> Any:
    """``x`` with ``fn`` applied to every string in it (mapping keys included)."""
    if isinstance(x, str):
        return fn(x)
    if isinstance(x, Mapping):
        return {map_strings(k, fn): map_strings(v, fn) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [map_strings(v, fn) for v in x]
    return x


def pick_markers(texts: Iterable[str], n: int = 3) -> tuple[str, ...]:
    """``n`` private-use characters (plane 15) that occur in none of ``texts``."""
    texts = list(texts)
    out: list[str] = []
    for cp in range(0xF0000, 0xFFFFE):
        ch = chr(cp)
        if not any(ch in t for t in texts):
            out.append(ch)
            if len(out) == n:
                return tuple(out)
    raise BackendError("chat encoding: no free private-use marker characters")  # pragma: no cover


def mark_text(text: str, matcher: SpecialMatcher, start: str, end: str, cut: str) -> str:
    """``text`` wrapped in ``start``/``end`` (inside its leading and trailing whitespace, so a
    template's ``trim`` still sees it) with ``cut`` inside every parseable occurrence; ``text``
    unchanged when it holds none."""
    cuts = matcher.cut_points(text)
    if not cuts:
        return text
    lo, hi = len(text) - len(text.lstrip()), len(text.rstrip())
    events = sorted([(lo, 0, start), *((c, 1, cut) for c in cuts), (hi, 2, end)])
    out, prev = [], 0
    for pos, _, mark in events:
        out.append(text[prev:pos])
        out.append(mark)
        prev = pos
    out.append(text[prev:])
    return "".join(out)


def split_marked(rendered: str, start: str, end: str, cut: str) -> list[tuple[str, bool]]:
    """A prompt rendered from marked texts as ``(text, literal)`` runs, markers removed.

    Text between ``start`` and ``end`` is literal (message text); a ``cut`` ends a run. When
    the template did not keep the markers paired (it sliced or split a marked text), ``start``
    and ``end`` are ignored and every run is the template's, split at the cuts alone: a cut
    still keeps each occurrence from being parsed whole. Empty runs are dropped."""
    parts = re.split(f"([{re.escape(start + end + cut)}])", rendered)
    runs: list[tuple[str, bool]] = []
    literal = False
    paired = True
    for i, part in enumerate(parts):
        if i % 2 == 0:
            if part:
                runs.append((part, literal))
        elif part == start:
            paired = paired and not literal
            literal = True
        elif part == end:
            paired = paired and literal
            literal = False
    if paired and not literal:
        return runs
    flat = rendered.replace(start, "").replace(end, "")
    return [(p, False) for p in flat.split(cut) if p]


_ANCHOR = "\n"


def continuation(tokenize: Any, text: str) -> list[int]:
    """``tokenize(text)`` as it would go on after other text: the ids of ``anchor + text``
    less the anchor's, when they start with them (a tokenizer adding a leading space to each
    call, as SentencePiece's does, adds it to the anchor); plain ``tokenize(text)`` otherwise."""
    head = tokenize(_ANCHOR)
    if head:
        both = tokenize(_ANCHOR + text)
        if both[: len(head)] == head:
            return list(both[len(head) :])
    return list(tokenize(text))
