"""The engine's lock: reentrant, and fair, so a busy decoding thread cannot starve the others.

The scheduler (:mod:`guardrail.scheduler`) takes the engine's lock for every decode step and
takes it again at once. With ``threading.RLock`` the thread that releases a lock usually takes
it back before a waiting thread is even scheduled, so a caller waiting to run a probe or a
tokenizer-side job on the same model could wait for a whole batch to finish. This lock serves
waiting threads in arrival order: a thread that takes it again queues behind them.
"""

from __future__ import annotations

import threading
from collections import deque
from types import TracebackType


class EngineLock:
    """A reentrant lock that hands itself to waiting threads in the order they came."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._count = 0
        self._queue: deque[object] = deque()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock (again, if this thread holds it); ``False`` when not taken in time."""
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._count += 1
                return True
            if self._owner is None and not self._queue:
                self._owner, self._count = me, 1
                return True
            if not blocking:
                return False
            turn = object()
            self._queue.append(turn)
            ok = self._cond.wait_for(
                lambda: self._owner is None and self._queue[0] is turn,
                None if timeout < 0 else timeout,
            )
            if not ok:
                self._queue.remove(turn)
                self._cond.notify_all()
                return False
            self._queue.popleft()
            self._owner, self._count = me, 1
            return True

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("EngineLock.release: this thread does not hold the lock")
            self._count -= 1
            if self._count == 0:
                self._owner = None
                self._cond.notify_all()

    def held_by_me(self) -> bool:
        """Whether the calling thread holds the lock."""
        with self._cond:
            return self._owner == threading.get_ident()

    @property
    def waiting(self) -> int:
        """Threads waiting for the lock."""
        with self._cond:
            return len(self._queue)

    def __enter__(self) -> EngineLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


__all__ = ["EngineLock"]
