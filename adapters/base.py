"""The backend protocol: what the decoding loop needs from a model, and nothing more.

A backend renders chat messages with the model's own chat template, tokenizes, and runs
*token streams*: several sequences of the same model advanced together, one batched forward
pass per step, each returning its next-token logits. Rules, sampling, stopping and streaming
live in :mod:`guardrail.decoding`; a backend never sees them.

A backend's jobs come in roles. Every backend has the two required ones, and :class:`Backend`
is their union:

* :class:`ChatText`: the model's text side (chat template, tokenizer, end-of-turn tokens);
* :class:`Compute`: token streams in, logits out (:meth:`Compute.open`, context limits).

Optional capabilities are ``runtime_checkable`` protocols; code that needs one checks it with
``isinstance`` (or :func:`require`, which names the backend and what it lacks):

* :class:`HasHiddenStates`: the prompt's final hidden states (llama.cpp, transformers);
* :class:`HasLoraContexts`: the same weights with a GGUF LoRA adapter on a context of its own
  (llama.cpp);
* :class:`HasLayerHooks`: the torch module whose layers faithful expert mixing hooks
  (transformers);
* :class:`MultiModel`: streams placed on several member backends, with their locks (routed);
* :class:`HasHFTokenizer`: a Hugging Face tokenizer (transformers).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from guardrail.errors import BackendError, ConfigError

#: Special tokens that end an assistant turn in common chat formats (the same list llama.cpp uses
#: to recognise end-of-generation tokens); a backend adds those its vocabulary has as specials.
KNOWN_END_OF_TURN = (
    "<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|end_of_text|>", "<EOT>", "<｜end▁of▁sentence｜>", "<|return|>", "<|call|>",
)

Message = Mapping[str, Any]
"""A chat message in the OpenAI/HF shape: ``{"role": ..., "content": ...}`` (plus tool fields)."""


class Streams(ABC):
    """Live token streams of one model, advanced in lock-step.

    Streams are addressed by their position among the *live* streams (0 .. ``n_live - 1``);
    :meth:`keep` drops the others and renumbers the rest in order. This is the interface the
    loop sees; backends implement it through :class:`GuardedStreams`.
    """

    @property
    @abstractmethod
    def n_live(self) -> int:
        """Number of live streams."""

    @abstractmethod
    def logits(self) -> NDArray[np.float32]:
        """Next-token logits of every live stream, ``[n_live, vocab]`` float32 (a fresh copy)."""

    @abstractmethod
    def append(self, tokens: Sequence[int]) -> None:
        """Feed one token to each live stream (``len(tokens) == n_live``) in one forward pass."""

    @abstractmethod
    def keep(self, indices: Sequence[int]) -> None:
        """Keep only the live streams at ``indices`` (ascending) and free the rest."""

    @abstractmethod
    def lengths(self) -> list[int]:
        """Tokens held by each live stream (prompt plus appended)."""

    @abstractmethod
    def close(self) -> None:
        """Free every stream; further calls are errors. Idempotent."""

    def __enter__(self) -> Streams:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GuardedStreams(Streams):
    """:class:`Streams` whose public calls are checked here, once for every backend.

    The public methods refuse closed streams, keep the live count, check that :meth:`append`
    gets one token per live stream and that :meth:`keep` gets ascending live positions (keeping
    every stream is a no-op), then call the backend's hooks (``_logits``, ``_append``, ``_keep``,
    ``_lengths``, ``_close``), which may assume valid arguments. :meth:`close` calls ``_close``
    once. Subclasses call ``super().__init__(n_live)`` before anything that may raise.
    """

    def __init__(self, n_live: int) -> None:
        self._n_live = n_live
        self._closed = False

    @property
    def n_live(self) -> int:
        return self._n_live

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def _check_open(self, op: str) -> None:
        if self._closed:
            raise BackendError(f"{op}: streams are closed")

    def logits(self) -> NDArray[np.float32]:
        self._check_open("logits")
        return self._logits()

    def append(self, tokens: Sequence[int]) -> None:
        self._check_open("append")
        if len(tokens) != self._n_live:
            raise ConfigError(f"append: {len(tokens)} tokens for {self._n_live} live streams")
        self._append(tokens)

    def keep(self, indices: Sequence[int]) -> None:
        self._check_open("keep")
        idx = [int(i) for i in indices]
        if any(not 0 <= i < self._n_live for i in idx) or any(
            a >= b for a, b in zip(idx, idx[1:])
        ):
            raise ConfigError(
                f"keep: indices {idx} are not ascending positions among {self._n_live} live "
                "streams"
            )
        if len(idx) == self._n_live:  # ascending and in range: every stream, nothing to free
            return
        self._keep(idx)
        self._n_live = len(idx)

    def lengths(self) -> list[int]:
        return self._lengths()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    @abstractmethod
    def _logits(self) -> NDArray[np.float32]:
        """:meth:`logits` of open streams."""

    @abstractmethod
    def _append(self, tokens: Sequence[int]) -> None:
        """:meth:`append` of open streams, one token per live stream."""

    @abstractmethod
    def _keep(self, indices: list[int]) -> None:
        """:meth:`keep` of open streams: ``indices`` ascending, in range, fewer than all."""

    @abstractmethod
    def _lengths(self) -> list[int]:
        """:meth:`lengths`."""

    @abstractmethod
    def _close(self) -> None:
        """Free every stream (called once)."""


# --- roles --------------------------------------------------------------------------------


@runtime_checkable
class ChatText(Protocol):
    """Role: the model's text side (chat template, tokenizer, end-of-turn tokens)."""

    @property
    def model_name(self) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def end_of_turn_ids(self) -> frozenset[int]: ...

    @property
    def chat_template(self) -> str | None: ...

    def render(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str: ...

    def tokenize(self, text: str) -> list[int]: ...

    def tokenize_text(self, text: str) -> list[int]: ...

    @property
    def parsed_special_strings(self) -> frozenset[str]: ...

    def detokenize(self, ids: Sequence[int]) -> str: ...

    def encode_chat(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]: ...

    def supports_system_role(self) -> bool: ...


@runtime_checkable
class Compute(Protocol):
    """Role: token streams in, next-token logits out."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def n_ctx(self) -> int: ...

    @property
    def max_streams(self) -> int: ...

    @property
    def shared_context(self) -> bool: ...

    def open(self, prompts: Sequence[Sequence[int]]) -> Streams: ...


@runtime_checkable
class HasHiddenStates(Protocol):
    """Capability: the model's final hidden states over a prompt (what prompt probes read)."""

    def prompt_hidden_states(self, ids: Sequence[int]) -> NDArray[np.float32]:
        """The final hidden state (after the last norm) at every token of ``ids``
        (``[len(ids), hidden]``, float32)."""
        ...

    def prompt_hidden_state(self, ids: Sequence[int]) -> NDArray[np.float32]:
        """:meth:`prompt_hidden_states` at the last token of ``ids`` (``[hidden]``)."""
        ...


@runtime_checkable
class HasLoraContexts(Protocol):
    """Capability: these weights with a GGUF LoRA adapter applied, as a backend of its own."""

    def with_lora(self, path: str, scale: float | None) -> Backend:
        """The model with the adapter at ``path`` at ``scale`` (``None``: its own)."""
        ...


@runtime_checkable
class HasLayerHooks(Protocol):
    """Capability: the torch module whose decoder layers faithful expert mixing hooks."""

    model: Any


@runtime_checkable
class MultiModel(Protocol):
    """Capability: streams on several member backends; whoever decodes holds all ``locks``."""

    locks: Sequence[Any]


@runtime_checkable
class HasHFTokenizer(Protocol):
    """Capability: a Hugging Face tokenizer (its full vocabulary can be compared)."""

    tokenizer: Any


_WHAT: dict[type, str] = {
    HasHiddenStates: "the prompt's hidden states (prompt_hidden_states)",
    HasLoraContexts: "LoRA adapter contexts (with_lora; llama.cpp)",
    HasLayerHooks: "a torch module whose layers can be hooked (model; transformers)",
    MultiModel: "member backends and their locks (locks)",
    HasHFTokenizer: "a Hugging Face tokenizer (tokenizer)",
}

C = TypeVar("C")


def require(backend: Backend, capability: type[C], needed_for: str) -> C:
    """``backend`` as a ``capability`` backend, or a :class:`BackendError` that names the
    backend, the missing capability and what needed it."""
    if not isinstance(backend, capability):
        what = _WHAT.get(capability, capability.__name__)
        raise BackendError(
            f"{needed_for} needs {what}: backend {backend.name!r} ({backend.model_name}) is not "
            f"{capability.__name__}"
        )
    return backend


# --- chat encoding: message text is text --------------------------------------------------
#
# A tokenizer that parses special tokens in the rendered prompt would turn control tokens typed
# into a message (``<|im_end|>\n<|im_start|>system\n...``) into real turn boundaries. When some
# message text holds a string the tokenizer parses, :meth:`Backend.encode_chat` renders the
# conversation with each such text wrapped in private-use markers (and a cut marker inside every
# occurrence), splits the rendered prompt at the markers, tokenizes the template's pieces with
# special tokens parsed and the message texts with special parsing off, and concatenates. A
# conversation whose texts hold no such string is tokenized exactly as before, in one call.


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


def _strings_in(x: Any) -> Iterator[str]:
    """Every string in a JSON-like value: mapping keys and values, list items."""
    if isinstance(x, str):
        yield x
    elif isinstance(x, Mapping):
        for k, v in x.items():
            yield from _strings_in(k)
            yield from _strings_in(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _strings_in(v)


def _map_strings(x: Any, fn: Any) -> Any:
    """``x`` with ``fn`` applied to every string in it (mapping keys included)."""
    if isinstance(x, str):
        return fn(x)
    if isinstance(x, Mapping):
        return {_map_strings(k, fn): _map_strings(v, fn) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_map_strings(v, fn) for v in x]
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


def _continuation(tokenize: Any, text: str) -> list[int]:
    """``tokenize(text)`` as it would go on after other text: the ids of ``anchor + text``
    less the anchor's, when they start with them (a tokenizer adding a leading space to each
    call, as SentencePiece's does, adds it to the anchor); plain ``tokenize(text)`` otherwise."""
    head = tokenize(_ANCHOR)
    if head:
        both = tokenize(_ANCHOR + text)
        if both[: len(head)] == head:
            return list(both[len(head) :])
    return list(tokenize(text))


class HiddenStatesMixin:
    """For :class:`HasHiddenStates` backends: :meth:`prompt_hidden_state` from their
    ``prompt_hidden_states``."""

    def prompt_hidden_state(self, ids: Sequence[int]) -> NDArray[np.float32]:
        """The final hidden state at the last token of ``ids`` (``[hidden]``)."""
        return self.prompt_hidden_states(ids)[-1]  # type: ignore[attr-defined, no-any-return]


class Backend(ChatText, Compute, ABC):
    """A loaded model that turns token streams into logits: the union of the required roles
    (:class:`ChatText` and :class:`Compute`). Optional capabilities are the ``Has*`` protocols
    and :class:`MultiModel`, checked with ``isinstance``.

    Implementations own the weights. A backend is not re-entrant: one set of open streams at a
    time. The engine serialises callers (see :mod:`guardrail.engine`).
    """

    #: Short backend name used in policies, caches and metadata (``"llamacpp"``, ``"transformers"``).
    name: str = "base"

    @property
    @abstractmethod
    def model_name(self) -> str:
        """Human-readable model identifier (file or directory name)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Width of the logits rows."""

    @property
    @abstractmethod
    def n_ctx(self) -> int:
        """Longest sequence (prompt plus generation) one stream may hold."""

    @property
    def max_streams(self) -> int:
        """Most streams one :meth:`open` accepts; the loop splits larger batches."""
        return 64

    @property
    def shared_context(self) -> bool:
        """Whether all open streams share one context of ``n_ctx`` tokens (llama.cpp's unified
        KV cache), so a batch must fit in it as a whole; otherwise ``n_ctx`` bounds each stream."""
        return False

    @property
    @abstractmethod
    def end_of_turn_ids(self) -> frozenset[int]:
        """Every token id that ends the assistant's turn (EOS, EOT, ``<|im_end|>``, ...)."""

    @property
    @abstractmethod
    def chat_template(self) -> str | None:
        """The model's own Jinja chat template, if it ships one."""

    @abstractmethod
    def render(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """Render ``messages`` (and ``tools``) with the model's chat template into prompt text."""

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of rendered prompt text; special tokens in the text are parsed, no BOS added
        beyond what the template wrote. For the template's (and the operator's) own text only:
        message text goes through :meth:`encode_chat`, which never parses special tokens in it."""

    def tokenize_text(self, text: str) -> list[int]:
        """Token ids of message text: special tokens are not parsed (``<|im_end|>`` typed in a
        message is text), no BOS added. Backends whose :meth:`tokenize` parses special tokens
        override this (the default is :meth:`tokenize`, right only for a tokenizer that parses
        none)."""
        return self.tokenize(text)

    @property
    def parsed_special_strings(self) -> frozenset[str]:
        """Every string :meth:`tokenize` would turn into a special, control or added token
        (the strings :meth:`encode_chat` keeps message text from producing). Backends whose
        tokenizer parses such tokens override this; the default is none."""
        return frozenset()

    def special_matcher(self) -> SpecialMatcher:
        """A :class:`SpecialMatcher` of :attr:`parsed_special_strings` (built once per set)."""
        strings = self.parsed_special_strings
        cached = self.__dict__.get("_guardrail_special_matcher")
        if cached is None or cached[0] != strings:
            cached = (strings, SpecialMatcher(strings))
            self.__dict__["_guardrail_special_matcher"] = cached
        return cached[1]  # type: ignore[no-any-return]

    @abstractmethod
    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of generated ids, special tokens skipped."""

    @abstractmethod
    def open(self, prompts: Sequence[Sequence[int]]) -> Streams:
        """Prefill one stream per prompt (one batched pass where possible) and return them."""

    def encode_chat(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """Render then tokenize, ready to generate the assistant turn; special tokens come only
        from the template's own text, never from message text (see :meth:`encode_chat_segments`).
        The one entry point for turning a conversation into prompt ids."""
        segments = self.encode_chat_segments(
            messages, tools=tools, add_generation_prompt=add_generation_prompt
        )
        return [t for seg in segments for t in seg.ids]

    def encode_chat_segments(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[ChatSegment]:
        """:meth:`encode_chat` as :class:`ChatSegment` runs (their texts make the rendered prompt).

        When no string in ``messages`` or ``tools`` holds a :attr:`parsed_special_strings`
        entry, one segment: the rendered prompt tokenized by :meth:`tokenize` in one call (the
        ids every earlier version produced). Otherwise each string that holds one is wrapped in
        private-use markers with a cut inside every occurrence, the conversation is rendered,
        split at the markers (:func:`split_marked`), and the template's runs are tokenized by
        :meth:`tokenize`, the message texts by :meth:`tokenize_text`, each cut piece on its own.
        A run that continues text (not just after a special token) is tokenized as a
        continuation, so a tokenizer that adds a leading space to each call (SentencePiece)
        adds none inside a text."""
        matcher = self.special_matcher()
        found = any(
            matcher.found_in(s) for s in (*_strings_in(list(messages)), *_strings_in(tools))
        )
        if not found:
            text = self.render(messages, tools=tools, add_generation_prompt=add_generation_prompt)
            return [ChatSegment(text, tuple(self.tokenize(text)), literal=False)]
        start, end, cut = pick_markers(
            [*_strings_in(list(messages)), *_strings_in(tools), self.chat_template or ""]
        )

        def mark(text: str) -> str:
            return mark_text(text, matcher, start, end, cut)

        rendered = self.render(
            _map_strings(list(messages), mark),
            tools=_map_strings(list(tools), mark) if tools else None,
            add_generation_prompt=add_generation_prompt,
        )
        segments: list[ChatSegment] = []
        for text, literal in split_marked(rendered, start, end, cut):
            fn = self.tokenize_text if literal else self.tokenize
            prev = segments[-1] if segments else None
            joins = prev is not None and (prev.literal or not matcher.ends_with_one(prev.text))
            ids = _continuation(fn, text) if joins else fn(text)
            segments.append(ChatSegment(text, tuple(ids), literal))
        return segments

    def chat_token_span(
        self, segments: Sequence[ChatSegment], start: int, end: int
    ) -> tuple[int, int] | None:
        """Token positions ``[a, b)`` of characters ``[start, end)`` of the prompt text of
        ``segments`` (:meth:`encode_chat_segments`): ``a`` counts the tokens before ``start``,
        ``b`` the prompt's tokens less those after ``end``, each tokenized as its segment was.
        ``None`` when the span is empty or out of range."""
        n = sum(len(seg.ids) for seg in segments)
        a = b = None
        pos = tok = 0
        for seg in segments:
            fn = self.tokenize_text if seg.literal else self.tokenize
            stop = pos + len(seg.text)
            if a is None and pos <= start < stop:
                a = tok + len(fn(seg.text[: start - pos]))
            if b is None and pos <= end <= stop:
                b = tok + len(seg.ids) - len(fn(seg.text[end - pos :]))
            pos, tok = stop, tok + len(seg.ids)
        if a is None or b is None or not 0 <= a < b <= n:
            return None
        return a, b

    def supports_system_role(self) -> bool:
        """Whether the chat template accepts a ``system`` message (Gemma-2's, for one, raises)."""
        try:
            self.render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
        except Exception:  # noqa: BLE001 - templates signal "unsupported" by raising anything
            return False
        return True

    def close(self) -> None:
        """Release the model (optional; garbage collection also frees it)."""
