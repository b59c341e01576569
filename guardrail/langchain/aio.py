"""Run a blocking iterator in a worker thread and consume it from asyncio.

Decoding is synchronous (the backends are); the async chat-model methods hand the token loop to
a worker thread and receive its items through an ``asyncio.Queue``, so the event loop is never
blocked. Closing the async iterator (a cancelled task, a client that went away) sets the cancel
event the worker checks between items, so its streams are freed at the next step.
"""

from __future__ import annotations

import asyncio
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


__all__ = ["iterate_in_thread"]
