"""Token streams: live sequences of one model advanced in lock-step (what a backend opens).

:class:`Streams` is the interface the decoding loop sees; :class:`GuardedStreams` is the template
backends implement, with the closed/live-count/append/keep checks done once here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

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

    @property
    def can_add(self) -> bool:
        """Whether :meth:`add` can join new streams to these while they run (continuous
        batching); backends that cannot are batched a whole batch at a time."""
        return False

    def add(self, prompts: Sequence[Sequence[int]]) -> Iterator[int]:
        """Prefill new streams beside the live ones, one chunk per ``next()`` (each yields the
        chunk's token count), so the live streams can be advanced between chunks. When the
        iterator is exhausted the new streams are live, after the others, with their
        next-token logits ready; closing it early frees what it had prefilled."""
        raise NotImplementedError(f"{type(self).__name__} cannot add streams while running")

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

    def add(self, prompts: Sequence[Sequence[int]]) -> Iterator[int]:
        self._check_open("add")
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ConfigError("add: every new stream needs a prompt of at least one token")
        return self._added(prompts)

    def _added(self, prompts: Sequence[Sequence[int]]) -> Iterator[int]:
        yield from self._add(prompts)
        self._n_live += len(prompts)

    def _add(self, prompts: Sequence[Sequence[int]]) -> Iterator[int]:
        """:meth:`add` of open streams: prefill in chunks (yield each chunk's size), then make
        the new streams live after the others (the caller counts them)."""
        raise NotImplementedError(f"{type(self).__name__} cannot add streams while running")

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
