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

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
from guardrail.adapters.chat_encoding import (
    ChatSegment,
    SpecialMatcher,
    continuation,
    map_strings,
    mark_text,
    pick_markers,
    split_marked,
    strings_in,
)
from guardrail.adapters.streams import (  # noqa: F401 - also imported from here
    KNOWN_END_OF_TURN,
    GuardedStreams,
    Message,
    Streams,
)
from numpy.typing import NDArray

from guardrail.errors import BackendError

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

    def continued_hidden_states(self, ids: Sequence[int], prompt_len: int) -> NDArray[np.float32]:
        """:meth:`prompt_hidden_states` of ``ids``, a prompt (its first ``prompt_len`` tokens)
        and the tokens after it; a backend that keeps a read prompt's cache computes only the
        tokens after it (equal to a whole read up to float rounding; the backend says how
        close)."""
        ...

    def prompt_hidden_states_many(
        self, prompts: Sequence[Sequence[int]]
    ) -> list[NDArray[np.float32]]:
        """:meth:`prompt_hidden_states` of each prompt, batched where the backend gains from
        it (equal to one read at a time up to float rounding; the backend says how close)."""
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


@runtime_checkable
class HasGrammarTokenizer(Protocol):
    """Capability: the model's vocabulary as a grammar engine's tokenizer (llguidance), so a
    JSON schema can mask the logits in one pass over the vocabulary."""

    def grammar_tokenizer(self) -> Any:
        """An ``llguidance.LLTokenizer`` for this model (about a second to build: cache it)."""
        ...


_WHAT: dict[type, str] = {
    HasHiddenStates: "the prompt's hidden states (prompt_hidden_states)",
    HasLoraContexts: "LoRA adapter contexts (with_lora; llama.cpp)",
    HasLayerHooks: "a torch module whose layers can be hooked (model; transformers)",
    MultiModel: "member backends and their locks (locks)",
    HasHFTokenizer: "a Hugging Face tokenizer (tokenizer)",
    HasGrammarTokenizer: "a grammar engine's tokenizer (grammar_tokenizer; llguidance)",
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


class HiddenStatesMixin:
    """For :class:`HasHiddenStates` backends: :meth:`prompt_hidden_state` from their
    ``prompt_hidden_states``."""

    def prompt_hidden_state(self, ids: Sequence[int]) -> NDArray[np.float32]:
        """The final hidden state at the last token of ``ids`` (``[hidden]``)."""
        return self.prompt_hidden_states(ids)[-1]  # type: ignore[attr-defined, no-any-return]

    def continued_hidden_states(self, ids: Sequence[int], prompt_len: int) -> NDArray[np.float32]:
        """A whole read of ``ids`` (exactly :meth:`prompt_hidden_states`); llama.cpp overrides
        this to compute only the tokens after the cached prompt."""
        return self.prompt_hidden_states(ids)  # type: ignore[attr-defined, no-any-return]

    def prompt_hidden_states_many(
        self, prompts: Sequence[Sequence[int]]
    ) -> list[NDArray[np.float32]]:
        """Each prompt's hidden states, one read at a time. Backends that gain from batching
        override this (transformers, 1.7x on the 40-token calibration prompts on 2 CPU cores); llama.cpp
        does not (a batched prefill measured 1.00x and sums in another order), so it reads one
        prompt at a time."""
        return [self.prompt_hidden_states(ids) for ids in prompts]  # type: ignore[attr-defined]


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
            matcher.found_in(s) for s in (*strings_in(list(messages)), *strings_in(tools))
        )
        if not found:
            text = self.render(messages, tools=tools, add_generation_prompt=add_generation_prompt)
            return [ChatSegment(text, tuple(self.tokenize(text)), literal=False)]
        start, end, cut = pick_markers(
            [*strings_in(list(messages)), *strings_in(tools), self.chat_template or ""]
        )

        def mark(text: str) -> str:
            return mark_text(text, matcher, start, end, cut)

        rendered = self.render(
            map_strings(list(messages), mark),
            tools=map_strings(list(tools), mark) if tools else None,
            add_generation_prompt=add_generation_prompt,
        )
        segments: list[ChatSegment] = []
        for text, literal in split_marked(rendered, start, end, cut):
            fn = self.tokenize_text if literal else self.tokenize
            prev = segments[-1] if segments else None
            joins = prev is not None and (prev.literal or not matcher.ends_with_one(prev.text))
            ids = continuation(fn, text) if joins else fn(text)
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
