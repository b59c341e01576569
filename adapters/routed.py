"""Streams placed on several backends that share one tokenizer, advanced as one set.

Portable experts need not be the same model under another prompt: an expert may be another model
with the same tokenizer, or (llama.cpp) this model with a LoRA adapter, which llama.cpp applies
to a whole context. :class:`RoutedBackend` puts each stream of a request on its member backend
and presents them to the decoding loop as one :class:`Streams`, in the request's order, so every
rule works unchanged. Text (rendering, tokens, end of turn) is the first member's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from guardrail.adapters.base import Backend, GuardedStreams, Message, Streams
from numpy.typing import NDArray

from guardrail.errors import ConfigError


class RoutedStreams(GuardedStreams):
    """Each member's streams, interleaved back into the request's stream order.

    Members run their forward passes at the same time, one thread each: their contexts are
    separate and the native calls release the GIL, so a step costs about one member's pass
    where cores allow rather than the sum of them.
    """

    def __init__(
        self, members: Sequence[Backend], placement: Sequence[int],
        prompts: Sequence[Sequence[int]], vocab: int,
    ):
        super().__init__(len(placement))
        self._where = list(placement)
        self._vocab = vocab
        self._subs: dict[int, Streams] = {}
        used = sorted(set(self._where))
        self._pool = ThreadPoolExecutor(len(used), thread_name_prefix="guardrail-expert")
        opened = {
            m: self._pool.submit(
                members[m].open, [p for p, w in zip(prompts, self._where) if w == m]
            )
            for m in used
        }
        try:
            for m, fut in opened.items():
                self._subs[m] = fut.result()
        except BaseException:
            for fut in opened.values():  # close what did open before re-raising
                if fut.exception() is None:
                    fut.result().close()
            self._subs = {}
            self.close()
            raise

    def _rows(self, m: int) -> list[int]:
        return [i for i, w in enumerate(self._where) if w == m]

    def _logits(self) -> NDArray[np.float32]:
        out = np.empty((len(self._where), self._vocab), dtype=np.float32)
        for m, sub in self._subs.items():
            out[self._rows(m)] = sub.logits()[:, : self._vocab]
        return out

    def _append(self, tokens: Sequence[int]) -> None:
        work = [(sub, [tokens[i] for i in self._rows(m)]) for m, sub in self._subs.items()]
        futures = [self._pool.submit(sub.append, toks) for sub, toks in work[1:]]
        try:
            work[0][0].append(work[0][1])  # the first member on this thread
        finally:
            for fut in futures:
                fut.result()

    def _keep(self, indices: list[int]) -> None:
        kept = set(indices)
        for m in list(self._subs):
            rows = self._rows(m)
            local = [j for j, i in enumerate(rows) if i in kept]
            if not local:
                self._subs.pop(m).close()
            elif len(local) < len(rows):
                self._subs[m].keep(local)
        self._where = [self._where[i] for i in indices]

    def _lengths(self) -> list[int]:
        out = [0] * len(self._where)
        for m, sub in self._subs.items():
            for i, n in zip(self._rows(m), sub.lengths()):
                out[i] = n
        return out

    def _close(self) -> None:
        for sub in self._subs.values():
            sub.close()
        self._subs = {}
        self._pool.shutdown(wait=True)


class RoutedBackend(Backend):
    """One request's streams on several backends (``placement[i]``: member of stream ``i``).

    Built per request by the engine, which decodes it alone holding every member's lock.
    Logits are cut to the narrowest member's width (models of one family often pad their
    embedding tables to different sizes).
    """

    name = "routed"

    def __init__(
        self, members: Sequence[Backend], placement: Sequence[int], *, locks: Sequence[Any] = ()
    ):
        if not members:
            raise ConfigError("RoutedBackend: at least one member backend is needed")
        if any(not 0 <= m < len(members) for m in placement):
            raise ConfigError(f"RoutedBackend: placement {list(placement)} names no member")
        self.members = list(members)
        self.placement = list(placement)
        self.primary = members[0]
        #: Locks of the members' engines; whoever decodes on this backend holds them all.
        self.locks = list(locks)

    @property
    def model_name(self) -> str:
        return " + ".join(dict.fromkeys(m.model_name for m in self.members))

    @property
    def vocab_size(self) -> int:
        return min(m.vocab_size for m in self.members)

    @property
    def n_ctx(self) -> int:
        return min(m.n_ctx for m in self.members)

    @property
    def max_streams(self) -> int:
        return len(self.placement)

    @property
    def shared_context(self) -> bool:
        return any(m.shared_context for m in self.members)

    @property
    def end_of_turn_ids(self) -> frozenset[int]:
        return self.primary.end_of_turn_ids

    @property
    def chat_template(self) -> str | None:
        return self.primary.chat_template

    def render(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        return self.primary.render(
            messages, tools=tools, add_generation_prompt=add_generation_prompt
        )

    def tokenize(self, text: str) -> list[int]:
        return self.primary.tokenize(text)

    def tokenize_text(self, text: str) -> list[int]:
        return self.primary.tokenize_text(text)

    @property
    def parsed_special_strings(self) -> frozenset[str]:
        return self.primary.parsed_special_strings

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.primary.detokenize(ids)

    def open(self, prompts: Sequence[Sequence[int]]) -> RoutedStreams:
        if len(prompts) != len(self.placement):
            raise ConfigError(
                f"open: {len(prompts)} prompts for a placement of {len(self.placement)} streams"
            )
        return RoutedStreams(self.members, self.placement, prompts, self.vocab_size)
