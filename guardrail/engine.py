"""The engine: one loaded backend, its lock, its scheduler, its per-model caches, and requests
from policies.

A request is planned by its policy's strategy (found in :mod:`guardrail.strategies` by kind),
then decoded by the one loop. A backend is not re-entrant, so every call on it holds the
engine's lock (:class:`~guardrail.locks.EngineLock`). Requests from every caller go to the
engine's :class:`~guardrail.scheduler.Scheduler`, which decodes them together (continuous
batching) and takes the lock for one step at a time; a request that must run alone (its rule
changes the model while it runs, or it runs on other models too) waits until the running ones
are done and is decoded holding the lock throughout. Whatever is worth computing once per model
(the template's default system prompt, tool support, token texts, expert mixes, ...) lives in
:meth:`Engine.cached`, so it dies with the engine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import ExitStack, closing, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, overload

from guardrail.adapters.base import Backend, Message, MultiModel
from guardrail.decoding.loop import (
    ErrorEvent,
    FinishEvent,
    GenerationRequest,
    OnError,
    TokenEvent,
    decode,
)
from guardrail.decoding.rules import AttachedRule, StepInfo
from guardrail.decoding.sampling import SamplingParams
from guardrail.errors import ConfigError, ContextOverflowError
from guardrail.locks import EngineLock
from guardrail.policy.model import ModelConfig
from guardrail.policy.schema import Policy
from guardrail.scheduler import Scheduler
from guardrail.strategies import Plan, plan
from guardrail.strategies.prompts import default_system_prompt, with_system_prompt

T = TypeVar("T")


@dataclass
class Generation:
    """A finished answer and everything known about how it was made."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str
    steps: list[StepInfo] = field(default_factory=list)
    probe: Mapping[str, float] = field(default_factory=dict)  # the request's probe reading

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def modes(self) -> list[str]:
        return [s["mode"] for s in self.steps if "mode" in s]


class Engine:
    """A loaded backend, its lock, per-model caches, and request building from policies."""

    def __init__(
        self, backend: Backend, *, load: Callable[[ModelConfig], Engine] | None = None,
        lock: EngineLock | None = None,
    ) -> None:
        self.backend = backend
        self.lock = lock or EngineLock()
        self._scheduler: Scheduler | None = None
        self._load = load
        self._cache: dict[Hashable, Any] = {}
        self._cache_lock = threading.Lock()

    # ------------------------------------------------------------------ per-model state

    def cached(self, key: Hashable, make: Callable[[], T]) -> T:
        """``make()`` once per engine and ``key`` (an exception is not cached)."""
        with self._cache_lock:
            if key in self._cache:
                return self._cache[key]  # type: ignore[no-any-return]
        value = make()
        with self._cache_lock:
            return self._cache.setdefault(key, value)  # type: ignore[no-any-return]

    @property
    def scheduler(self) -> Scheduler:
        """The scheduler that decodes this engine's requests together (made on first use)."""
        with self._cache_lock:
            if self._scheduler is None:
                self._scheduler = Scheduler(self.backend, self.lock)
            return self._scheduler

    def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` where the model runs: on the scheduler's thread, holding the lock, between
        two decode steps (:meth:`~guardrail.scheduler.Scheduler.call`). Probes and detectors
        that read the model's hidden states or logits go through here."""
        return self.scheduler.call(fn)

    def load(self, cfg: ModelConfig) -> Engine:
        """The engine of another model (an expert on another model), loaded once."""
        if self._load is None:
            raise ConfigError("this engine wraps a backend given by object and cannot load "
                              "other models; build it with guardrail.loading.get_engine")
        return self._load(cfg)

    def sibling(self, backend: Backend) -> Engine:
        """An engine for a backend that shares this one's weights and lock (a LoRA context)."""
        return self.cached(("sibling", id(backend)),
                           lambda: Engine(backend, load=self._load, lock=self.lock))

    @property
    def default_system(self) -> str | None:
        """The chat template's default system prompt (see :func:`default_system_prompt`)."""

        def find() -> str | None:
            try:
                return default_system_prompt(self.backend)
            except Exception:  # noqa: BLE001 - a template that needs more than a user turn
                return None

        return self.cached("default_system", find)

    @property
    def system_role(self) -> bool:
        """Whether the chat template takes a system message."""
        return self.cached("system_role", self.backend.supports_system_role)

    # ------------------------------------------------------------------ requests

    def plan(
        self, policy: Policy, messages: Sequence[Message], *,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> Plan:
        """The policy's strategy's plan for ``messages`` under the deployment prompt."""
        return plan(policy.strategy, self, with_system_prompt(messages, policy.system_prompt),
                    tools)

    def stream_prompts(
        self, policy: Policy, messages: Sequence[Message], *,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[list[int]]:
        """Token ids of each stream the policy's strategy plans, answer stream first."""
        return self.plan(policy, messages, tools=tools).prompts

    def request(
        self,
        policy: Policy,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        stop: Sequence[str] = (),
    ) -> GenerationRequest:
        """A ready request: the plan's streams and rule, sampling and stops from the policy."""
        sp = policy.sampling
        t0 = time.perf_counter()
        p = self.plan(policy, messages, tools=tools)
        plan_s = time.perf_counter() - t0
        return GenerationRequest(
            prompts=p.prompts[: p.rule.n_streams],
            rule=p.rule,
            backend=p.backend,
            sampling=SamplingParams(sp.temperature, sp.top_k, sp.top_p, sp.seed),
            max_new_tokens=sp.max_new_tokens,
            stop=[*sp.stop, *stop],
            probe=dict(p.probe),
            timings={"plan_s": plan_s, **p.timings},
            check=p.check,
        )

    # ------------------------------------------------------------------ decoding

    def stream(
        self, requests: Sequence[GenerationRequest], *, errors: OnError = "raise"
    ) -> Iterator[TokenEvent | FinishEvent | ErrorEvent]:
        """Decode ``requests``, together with whatever other callers are decoding on this
        engine (the :attr:`scheduler`); yield their events (``request`` = index in
        ``requests``). Closing the iterator early cancels what is left of them.

        A request whose rule changes the model while it runs (:class:`AttachedRule`) or that
        runs on its own backend (experts on other models) is decoded alone, on the scheduler's
        thread once the running requests are done, holding the lock (and those models' locks)
        throughout. A thread that already holds the engine's lock (it would wait for itself)
        decodes its requests itself.

        A request that cannot run (it does not fit the context) raises before anything is
        decoded (``errors="raise"``, the default) or, with ``errors="event"``, gets one
        :class:`~guardrail.decoding.loop.ErrorEvent` and fails alone while the others are
        decoded (see :mod:`guardrail.decoding.loop`)."""
        alone = [i for i, r in enumerate(requests)
                 if isinstance(r.rule, AttachedRule) or r.backend is not None]
        if self.lock.held_by_me():
            yield from self._alone(requests, list(range(len(requests))), errors)
            return
        together = [i for i in range(len(requests)) if i not in alone]
        if together:
            events = self.scheduler.submit([requests[i] for i in together], errors=errors)
            with closing(events):
                for ev in events:
                    ev.request = together[ev.request]
                    yield ev
        if alone:
            yield from self.scheduler.alone(lambda: self._alone(requests, alone, errors))

    def _alone(
        self, requests: Sequence[GenerationRequest], idx: list[int], errors: OnError
    ) -> Iterator[TokenEvent | FinishEvent | ErrorEvent]:
        """Decode ``requests[idx]`` holding every lock they need: those that change the model
        one by one inside their rule's context, the others together."""
        locks = {id(self.lock): self.lock}
        for i in idx:
            b = requests[i].backend
            if isinstance(b, MultiModel):
                locks.update((id(k), k) for k in b.locks)
        attached = [i for i in idx if isinstance(requests[i].rule, AttachedRule)]
        rest = [i for i in idx if i not in attached]
        with ExitStack() as held:
            for _, lock in sorted(locks.items()):  # one global order: no lock-order deadlock
                held.enter_context(lock)
            groups: list[tuple[list[int], Any]] = [(rest, nullcontext())] if rest else []
            groups += [([i], requests[i].rule.attached()) for i in attached]  # type: ignore[attr-defined]
            for group, ctx in groups:
                with ctx:
                    for ev in decode(self.backend, [requests[i] for i in group], errors=errors):
                        ev.request = group[ev.request]
                        yield ev

    @overload
    def generate_many(
        self, requests: Sequence[GenerationRequest], *, return_exceptions: Literal[False] = ...
    ) -> list[Generation]: ...

    @overload
    def generate_many(
        self, requests: Sequence[GenerationRequest], *, return_exceptions: Literal[True]
    ) -> list[Generation | ContextOverflowError]: ...

    def generate_many(
        self, requests: Sequence[GenerationRequest], *, return_exceptions: bool = False
    ) -> list[Generation] | list[Generation | ContextOverflowError]:
        """Decode ``requests`` together and collect each answer, in request order.

        A request that cannot run (it does not fit the context) raises its
        :class:`~guardrail.errors.ContextOverflowError` before anything is decoded; with
        ``return_exceptions=True`` its slot holds that error instead and the others are answered.
        """
        out: list[Generation | ContextOverflowError | None] = [None] * len(requests)
        for ev in self.stream(requests, errors="event" if return_exceptions else "raise"):
            if isinstance(ev, FinishEvent):
                out[ev.request] = Generation(
                    ev.text, ev.token_ids, ev.prompt_tokens, ev.reason, ev.steps,
                    dict(requests[ev.request].probe),
                )
            elif isinstance(ev, ErrorEvent):
                out[ev.request] = ev.error
        missing = [i for i, g in enumerate(out) if g is None]
        if missing:  # every request ends in a finish or an error event
            raise RuntimeError(f"generate_many: no result for request(s) {missing}")
        return out  # type: ignore[return-value]

    def generate(self, policy: Policy, messages: Sequence[Message], **kw: Any) -> Generation:
        """One answer under ``policy``."""
        return self.generate_many([self.request(policy, messages, **kw)])[0]


__all__ = ["Engine", "Generation"]
