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


async def iterate_in_thread(
    make: Callable[[threading.Event], Iterator[T]], *, name: str = "guardrail-worker"
) -> AsyncIterator[T]:
    """Yield the items of ``make(cancel)``, which runs in a daemon thread."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
    cancel = threading.Event()

    def put(item: tuple[str, object]) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            cancel.set()

    def work() -> None:
        try:
            for item in make(cancel):
                if cancel.is_set():
                    return
                put(("item", item))
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            put(("error", e))
        else:
            put(("done", None))

    threading.Thread(target=work, name=name, daemon=True).start()
    try:
        while True:
            kind, item = await queue.get()
            if kind == "done":
                return
            if kind == "error":
                raise item  # type: ignore[misc]
            yield item  # type: ignore[misc]
    finally:
        cancel.set()


def iterate_ahead(
    make: Callable[[threading.Event], Iterator[T]], *, name: str = "guardrail-decode"
) -> Iterator[T]:
    """Yield the items of ``make(cancel)``, produced by a daemon thread that runs ahead."""
    items: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
    cancel = threading.Event()

    def work() -> None:
        try:
            for item in make(cancel):
                if cancel.is_set():
                    return
                items.put(("item", item))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            items.put(("error", e))
        else:
            items.put(("done", None))

    threading.Thread(target=work, name=name, daemon=True).start()
    try:
        while True:
            kind, item = items.get()
            if kind == "done":
                return
            if kind == "error":
                raise item  # type: ignore[misc]
            yield item  # type: ignore[misc]
    finally:
        cancel.set()


__all__ = ["iterate_ahead", "iterate_in_thread"]
