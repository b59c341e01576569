"""Decode in a worker thread and consume the chunks elsewhere: from asyncio, or from a paused
synchronous stream.

Decoding holds the model (its lock, its KV cache) from the first token to the last. If the
consumer held it too, a caller that pauses a ``stream()`` would keep the model from everyone
else, and a second call from the same thread would re-enter the model mid-decode. So the token
loop always runs in a worker thread that decodes ahead of its consumer, independent of how fast
the chunks are read, and releases the model when the answer is done:

* :func:`iterate_in_thread` hands the items to an asyncio task through an ``asyncio.Queue``,
  so the event loop is never blocked;
* :func:`iterate_ahead` hands them to a synchronous consumer through a ``queue.Queue``.

Closing either iterator (a cancelled task, a client that went away, a stream dropped half-read)
sets the cancel event the worker checks between items, so its streams are freed at the next step.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


Put = Callable[[tuple[str, object]], None]


def _start(make: Callable[[threading.Event], Iterator[T]], put: Put, cancel: threading.Event,
           name: str) -> None:
    """Run ``make(cancel)`` in a daemon thread, handing ``("item", x)``, then ``("done", None)``
    or ``("error", e)`` to ``put``; it stops between items once ``cancel`` is set."""

    def work() -> None:
        try:
            for item in make(cancel):
                if cancel.is_set():
                    return
                put(("item", item))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(("error", e))
        else:
            put(("done", None))

    threading.Thread(target=work, name=name, daemon=True).start()


def _unwrap(kind: str, item: object) -> bool:
    """Whether ``(kind, item)`` is an item (``False`` at the end); raise a worker's error."""
    if kind == "error":
        raise item  # type: ignore[misc]
    return kind == "item"


async def iterate_in_thread(
    make: Callable[[threading.Event], Iterator[T]], *, name: str = "guardrail-worker"
) -> AsyncIterator[T]:
    """Yield the items of ``make(cancel)``, which runs in a daemon thread."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
    cancel = threading.Event()

    def put(item: tuple[str, object]) -> None:
        try:
            loop.call_soon_threadsafe(items.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            cancel.set()

    _start(make, put, cancel, name)
    try:
        while _unwrap(*(got := await items.get())):
            yield got[1]  # type: ignore[misc]
    finally:
        cancel.set()


def iterate_ahead(
    make: Callable[[threading.Event], Iterator[T]], *, name: str = "guardrail-decode"
) -> Iterator[T]:
    """Yield the items of ``make(cancel)``, produced by a daemon thread that runs ahead."""
    items: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
    cancel = threading.Event()
    _start(make, items.put, cancel, name)
    try:
        while _unwrap(*(got := items.get())):
            yield got[1]  # type: ignore[misc]
    finally:
        cancel.set()


__all__ = ["iterate_ahead", "iterate_in_thread"]
