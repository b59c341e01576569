"""Continuous batching: one thread per loaded model decodes every caller's requests together.

Callers (threads, asyncio tasks through worker threads, server requests) :meth:`~Scheduler.submit`
requests and read their events; the scheduler's thread owns the decoding. Between two steps it
admits waiting requests and retires finished ones, so a request that arrives while others are
being decoded joins them instead of waiting for the whole batch:

* **admission** — a request is admitted when its streams fit beside the running ones (the
  backend's stream slots, less :data:`RESERVED_STREAMS` kept for probes that read the model
  between steps) and, for a shared KV cache, when its worst-case tokens fit the context beside
  theirs; what does not fit waits, in arrival order;
* **chunked prefill** — a new request's prompts are prefilled in chunks of the backend's batch,
  at most ``prefill_tokens`` prompt tokens between two decode steps, so a long prompt does not
  stall the answers being decoded (a backend whose streams cannot be joined mid-run, such as
  transformers, starts a new batch once the running one is done);
* **one step** — every live stream of every request advances in one batched forward
  (:class:`~guardrail.decoding.loop.Batch`), exactly as in :func:`~guardrail.decoding.loop.decode`;
* **cancellation** — closing the iterator :meth:`~Scheduler.submit` returned (a client that went
  away, a cancelled task) frees the request's streams before the next step.

The thread takes the engine's lock (:class:`~guardrail.locks.EngineLock`, fair) for each step
only, so probes and tokenizer work of other callers run between steps. It stops after
:data:`IDLE_EXIT_S` seconds without work and starts again on the next request, so an engine no
caller holds can be freed.

What is exact: on llama.cpp with ``kv: per_stream`` (each stream its own cache) a greedy answer
equals the same request decoded alone, token for token, whatever was decoded beside it; with the
default unified cache the streams' cells interleave and an answer may drift (see
:class:`~guardrail.adapters.llamacpp.LlamaCppBackend`). docs/serve.md has the measurements.
"""

from __future__ import annotations

import atexit
import itertools
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from guardrail.decoding.loop import (
    Batch,
    ErrorEvent,
    FinishEvent,
    GenerationRequest,
    OnError,
    TokenEvent,
    fit_context,
    opened,
    start,
)
from guardrail.errors import BackendError, ConfigError, ContextOverflowError

if TYPE_CHECKING:
    from guardrail.adapters.base import Backend, Streams
    from guardrail.decoding.loop import _Live
    from guardrail.locks import EngineLock

Event = TokenEvent | FinishEvent | ErrorEvent
T = TypeVar("T")

RESERVED_STREAMS = 1
"""Stream slots the scheduler leaves free for probes that read the model between steps."""
IDLE_EXIT_S = 2.0
EXIT_JOIN_S = 10.0
"""How long interpreter exit waits for each scheduler thread to finish its step."""
_LIVE: weakref.WeakSet[Scheduler] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for scheduler in list(_LIVE):
        scheduler.shutdown()
"""Seconds without work after which the scheduler's thread exits (it restarts on demand)."""
POLL_S = 0.5
"""How often a waiting caller checks that the scheduler's thread is still alive."""


@dataclass
class _Ticket:
    """One :meth:`Scheduler.submit` call: its requests and the queue its events go to."""

    events: queue.Queue[tuple[str, Any]] = field(default_factory=queue.Queue)
    open: int = 0  # its requests not finished yet
    cancelled: bool = False


@dataclass
class _Entry:
    """One request of a ticket, from arrival to finish."""

    key: int  # the request's id inside the scheduler (the Batch's index)
    ticket: _Ticket
    local: int  # its index in the submit call
    req: GenerationRequest
    cap: int  # usable max_new_tokens
    tokens: int  # worst-case context tokens (shared KV cache)
    prefill: Iterator[int] | None = None  # chunks still to prefill (admitted, not yet live)
    times: dict[str, float] = field(default_factory=dict)  # monotonic clock at each stage


@dataclass
class _Job:
    """Work to run on the scheduler's thread between two steps (``exclusive``: once nothing
    is being decoded).

    A shared job runs holding the engine's lock. An exclusive job runs without it and takes
    the locks it needs itself: a request decoded on several models takes every model's lock in
    one global order (:meth:`guardrail.engine.Engine._alone`), which a thread that already held
    its own engine's lock could not do. Two engines each decoding on the other's model would
    then each hold one lock and wait for the other's for ever."""

    fn: Callable[[], Any]
    future: Future[Any]
    exclusive: bool


@dataclass
class SchedulerStats:
    """A snapshot of the scheduler (what the server's metrics read)."""

    waiting: int  # requests not admitted yet
    prefilling: int  # admitted requests whose prompts are being prefilled
    running: int  # requests being decoded
    live_streams: int  # streams of running and prefilling requests
    steps: int  # decode steps since the engine was loaded
    admitted: int  # requests admitted since the engine was loaded


def _timings(t: dict[str, float], end: float) -> dict[str, float]:
    """Seconds a request spent waiting, prefilling and decoding (what its trace reports)."""
    first = t.get("first", end)
    return {"queue_s": t["admit"] - t["submit"], "prefill_s": t["live"] - t["admit"],
            "first_token_s": first - t["submit"], "decode_s": end - first,
            "total_s": end - t["submit"]}


class Scheduler:
    """Continuous batching over one backend (see the module docstring).

    Args:
        backend: the engine's backend.
        lock: the engine's lock (held for each step, never across steps).
        prefill_tokens: most prompt tokens prefilled between two decode steps (default: the
            backend's batch, 32 tokens for llama.cpp, or 256).
    """

    def __init__(
        self, backend: Backend, lock: EngineLock, *, prefill_tokens: int | None = None
    ) -> None:
        if prefill_tokens is not None and prefill_tokens < 1:
            raise ConfigError(f"prefill_tokens must be >= 1, got {prefill_tokens}")
        self.backend = backend
        self.lock = lock
        self.prefill_tokens = prefill_tokens or int(getattr(backend, "n_batch", 256))
        self.capacity = max(1, backend.max_streams - RESERVED_STREAMS)
        self._cond = threading.Condition()
        self._waiting: deque[_Entry] = deque()
        self._prefilling: list[_Entry] = []
        self._running: dict[int, _Entry] = {}
        self._batch: Batch | None = None
        self._thread: threading.Thread | None = None
        self._keys = itertools.count()
        self._steps = 0
        self._admitted = 0
        self._jobs: deque[_Job] = deque()
        self._stopping = False
        _LIVE.add(self)

    def shutdown(self, timeout: float = EXIT_JOIN_S) -> None:
        """Let the thread finish its step and end (at interpreter exit: a thread still inside
        torch or llama.cpp when the process ends can abort it, "terminate called without an
        active exception"). Later requests start it again."""
        with self._cond:
            self._stopping = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:
            self._stopping = False

    # ------------------------------------------------------------------ callers

    def submit(
        self, requests: Sequence[GenerationRequest], *, errors: OnError = "raise"
    ) -> Iterator[Event]:
        """Queue ``requests``; iterate their events (``request`` = index in ``requests``).

        Context checks happen here, before anything is queued: a request that cannot run raises
        its :class:`~guardrail.errors.ContextOverflowError` (``errors="raise"``) or gets one
        :class:`~guardrail.decoding.loop.ErrorEvent`, yielded first (``errors="event"``).
        Closing the iterator early cancels whatever is left of the requests.
        """
        if errors not in ("raise", "event"):
            raise ConfigError(f"errors must be 'raise' or 'event', got {errors!r}")
        if len(requests) == 0:
            return iter(())
        ticket = _Ticket()
        entries: list[_Entry] = []
        for i, r in enumerate(requests):
            try:
                cap, tokens = fit_context(self.backend, r, i)
            except ContextOverflowError as e:
                if errors == "raise":
                    raise
                ticket.events.put(("item", ErrorEvent(i, e)))
                continue
            if len(r.prompts) > self.capacity:
                raise ConfigError(
                    f"request {i}: {len(r.prompts)} streams exceed the {self.capacity} this "
                    f"model decodes at once (raise the model's n_streams)"
                )
            entries.append(_Entry(next(self._keys), ticket, i, r, cap, tokens,
                                  times={"submit": time.monotonic()}))
        ticket.open = len(entries)
        if not entries:
            ticket.events.put(("done", None))
        with self._cond:
            self._waiting.extend(entries)
            self._wake()
        return self._consume(ticket)

    def _consume(self, ticket: _Ticket) -> Iterator[Event]:
        try:
            yield from self._handed(ticket.events, lambda: ticket.open > 0)
        finally:
            self.cancel(ticket)

    def _handed(self, items: queue.Queue[tuple[str, Any]],
                pending: Callable[[], bool]) -> Iterator[Any]:
        """What the scheduler's thread hands over on ``items``: ``("item", x)`` is yielded,
        ``("error", e)`` raised, ``("done", None)`` ends it. While waiting, a thread that died
        with work ``pending`` is an error rather than a wait for ever."""
        while True:
            try:
                kind, item = items.get(timeout=POLL_S)
            except queue.Empty:
                with self._cond:
                    alive = self._thread is not None and self._thread.is_alive()
                    dead = pending() and not alive
                if dead:  # pragma: no cover - the loop catches everything it can
                    raise BackendError("the scheduler's thread died") from None
                continue
            if kind == "item":
                yield item
            elif kind == "error":
                raise item
            else:
                return

    def cancel(self, ticket: _Ticket) -> None:
        """Drop what is left of ``ticket`` (its streams are freed before the next step)."""
        with self._cond:
            if ticket.open > 0 and not ticket.cancelled:
                ticket.cancelled = True
                self._cond.notify_all()

    def stats(self) -> SchedulerStats:
        with self._cond:
            rows = sum(len(e.req.prompts) for e in self._prefilling)
            rows += self._batch.rows if self._batch is not None else 0
            return SchedulerStats(len(self._waiting), len(self._prefilling),
                                  len(self._running), rows, self._steps, self._admitted)

    def _wake(self) -> None:
        """Start the thread if it is not running (holding ``_cond``) and notify it."""
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="guardrail-scheduler",
                                            daemon=True)
            self._thread.start()
        self._cond.notify_all()

    # ------------------------------------------------------------------ the thread

    def _busy(self) -> bool:
        exclusive = bool(self._jobs) and self._jobs[0].exclusive
        return bool((self._waiting and not exclusive) or self._prefilling or self._running
                    or self._jobs)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the scheduler's thread, holding the engine's lock, between two steps.

        Everything that runs the model goes through here or through :meth:`submit`, so all of a
        backend's computation happens on one thread: llama.cpp's CPU threads (OpenMP) belong to
        the thread that starts them, and a second thread computing on the same model leaves
        every later decode step about 30% slower. A thread that holds the lock already (it
        would wait for itself) runs ``fn`` itself."""
        if threading.current_thread() is self._thread or self.lock.held_by_me():
            with self.lock:
                return fn()
        return self._job(fn, exclusive=False).result()  # type: ignore[no-any-return]

    def alone(self, make: Callable[[], Iterator[T]]) -> Iterator[T]:
        """Iterate ``make()`` on the scheduler's thread once nothing else is being decoded,
        admitting nothing meanwhile (a request that must run alone); items are handed over as
        they come. Closing the iterator stops it between two items. ``make()`` takes the locks
        it needs, the engine's among them (see :class:`_Job`)."""
        if threading.current_thread() is self._thread or self.lock.held_by_me():
            yield from make()
            return
        items: queue.Queue[tuple[str, Any]] = queue.Queue()
        stop = threading.Event()

        def work() -> None:
            for item in make():
                if stop.is_set():
                    return
                items.put(("item", item))

        job = self._job(work, exclusive=True)
        job.add_done_callback(lambda f: items.put(
            ("error", f.exception()) if f.exception() is not None else ("done", None)))
        try:
            yield from self._handed(items, lambda: not job.done())
        finally:
            stop.set()

    def _job(self, fn: Callable[[], Any], *, exclusive: bool) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._cond:
            self._jobs.append(_Job(fn, fut, exclusive))
            self._wake()
        return fut

    def _run_jobs(self) -> None:
        """Run queued jobs (see :class:`_Job` for the locks each holds); an exclusive one waits
        for the batch to drain. Called without the engine's lock."""
        while True:
            with self._cond:
                if not self._jobs:
                    return
                job = self._jobs[0]
                if job.exclusive and (self._running or self._prefilling):
                    return  # decode the running ones first; nothing is admitted meanwhile
                self._jobs.popleft()
            if job.future.set_running_or_notify_cancel():
                try:
                    with nullcontext() if job.exclusive else self.lock:
                        job.future.set_result(job.fn())
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    job.future.set_exception(e)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping or not self._busy():
                    self._cond.wait_for(lambda: self._busy() or self._stopping,
                                        timeout=IDLE_EXIT_S)
                    if self._stopping or not self._busy():
                        self._close_streams()
                        self._thread = None
                        return
            try:
                self._run_jobs()
                with self.lock:
                    self._drop_cancelled()
                    self._admit()
                    self._step()
            except Exception as e:  # noqa: BLE001 - fails the running requests, not the thread
                self._fail_all(e)

    def _close_streams(self) -> None:
        if self._batch is not None:
            self._batch.streams.close()
            self._batch = None

    def _finish_entry(self, e: _Entry, kind: str, item: Any = None) -> None:
        """Hand ``e``'s end to its ticket (holding ``_cond``)."""
        t = e.ticket
        if kind == "error":
            if t.open > 0:
                t.open = 0
                t.cancelled = True  # the ticket's other requests stop too
                t.events.put(("error", item))
            return
        t.open -= 1
        if t.open == 0:
            t.events.put(("done", None))

    def _fail_all(self, error: BaseException) -> None:
        """A step or prefill failed: every admitted request fails with ``error``; the streams
        are closed and the next request starts afresh."""
        with self._cond:
            entries = [*self._prefilling, *self._running.values()]
            self._prefilling, self._running = [], {}
            for e in entries:
                if e.prefill is not None:
                    e.prefill.close()  # type: ignore[attr-defined]
                self._finish_entry(e, "error", error)
        with self.lock:
            try:
                self._close_streams()
            except Exception:  # noqa: BLE001 - nothing more can be done for them
                self._batch = None

    def _drop_cancelled(self) -> None:
        with self._cond:
            self._waiting = deque(e for e in self._waiting if not e.ticket.cancelled)
            for e in [e for e in self._prefilling if e.ticket.cancelled]:
                self._prefilling.remove(e)
                if e.prefill is not None:
                    e.prefill.close()  # type: ignore[attr-defined]  # frees its sequences
            gone = {k for k, e in self._running.items() if e.ticket.cancelled}
            for k in gone:
                del self._running[k]
        if gone and self._batch is not None:
            self._batch.drop(gone)

    def _used(self) -> tuple[int, int]:
        """Stream slots and worst-case context tokens held by admitted requests."""
        entries = [*self._prefilling, *self._running.values()]
        return sum(len(e.req.prompts) for e in entries), sum(e.tokens for e in entries)

    def _fits(self, e: _Entry, rows: int, tokens: int) -> bool:
        b = self.backend
        if rows + len(e.req.prompts) > self.capacity:
            return False
        free = getattr(b, "free_streams", None)  # llama.cpp: slots a probe may hold right now
        if free is not None and len(e.req.prompts) > free:
            return False
        return not b.shared_context or tokens + e.tokens <= b.n_ctx

    def _admit(self) -> None:
        """Admit waiting requests that fit, prefill up to ``prefill_tokens``, start the ready."""
        addable = self._batch is not None and self._batch.streams.can_add
        held = bool(self._jobs) and self._jobs[0].exclusive  # a request waits to run alone
        if (self._batch is None or addable or not self._running) and not held:
            with self._cond:
                rows, tokens = self._used()
                while self._waiting and self._fits(self._waiting[0], rows, tokens):
                    e = self._waiting.popleft()
                    e.times["admit"] = time.monotonic()
                    self._prefilling.append(e)
                    rows, tokens = rows + len(e.req.prompts), tokens + e.tokens
                    self._admitted += 1
        if not self._prefilling:
            return
        if self._batch is None or not self._batch.streams.can_add:
            self._start_batch()
            return
        budget = self.prefill_tokens if self._running else None  # idle: prefill to the end
        for e in list(self._prefilling):
            if e.prefill is None:
                e.prefill = self._batch.streams.add(
                    e.req.prompts[: opened(self.backend, e.req)])
            while True:
                try:
                    n = next(e.prefill)
                except StopIteration:
                    self._go_live(e)
                    break
                if budget is not None:
                    budget -= n
                    if budget <= 0:
                        return
            if budget is None:
                return  # one request live: decode it while the next ones prefill

    def _start_batch(self) -> None:
        """Open new streams for every admitted request (backends that cannot join streams to a
        running batch; and the first batch)."""
        if self._batch is not None and not self._running:
            self._close_streams()
        if self._batch is not None:
            return  # a fixed batch is still running: the admitted wait for it
        entries = list(self._prefilling)
        streams: Streams = self.backend.open(
            [p for e in entries for p in e.req.prompts[: opened(self.backend, e.req)]])
        self._batch = Batch(self.backend, streams)
        for e in entries:
            self._go_live(e)

    def _go_live(self, e: _Entry) -> None:
        assert self._batch is not None
        lv: _Live = start(self.backend, e.key, e.req, e.cap)
        self._batch.join(lv)
        with self._cond:
            self._prefilling.remove(e)
            e.prefill = None
            e.times["live"] = time.monotonic()
            self._running[e.key] = e

    def _step(self) -> None:
        batch = self._batch
        if batch is None or not batch.live:
            return
        events = batch.step()
        with self._cond:
            self._steps += 1
            for ev in events:
                e = self._running.get(ev.request)
                if e is None:
                    continue
                if isinstance(ev, TokenEvent) and "first" not in e.times:
                    e.times["first"] = time.monotonic()
                if isinstance(ev, FinishEvent):
                    del self._running[ev.request]
                    ev.timings = _timings(e.times, time.monotonic())
                ev.request = e.local
                e.ticket.events.put(("item", ev))
                if isinstance(ev, FinishEvent):
                    self._finish_entry(e, "done")
        if not batch.live:
            if batch.streams.can_add:
                batch.streams.keep([])  # free the finished streams, keep the set for the next
            else:
                self._close_streams()


__all__ = ["IDLE_EXIT_S", "RESERVED_STREAMS", "Scheduler", "SchedulerStats"]
