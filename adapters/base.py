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

    def detokenize(self, ids: Sequence[int]) -> str: ...

    def encode_chat(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
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
        beyond what the template wrote."""

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
    ) -> list[int]:
        """Render then tokenize, ready to generate the assistant turn."""
        return self.tokenize(self.render(messages, tools=tools))

    def supports_system_role(self) -> bool:
        """Whether the chat template accepts a ``system`` message (Gemma-2's, for one, raises)."""
        try:
            self.render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
        except Exception:  # noqa: BLE001 - templates signal "unsupported" by raising anything
            return False
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model (optional; garbage collection also frees it)."""
