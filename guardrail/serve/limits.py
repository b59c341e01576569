"""The server's bounds on callers: bearer keys, body size, and the queue of chat requests.

Each check answers at once with an OpenAI-shaped error (401, 413, 429) instead of letting a
request wait, grow or hang: a full queue is refused, not queued further.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request

from guardrail.serve.protocol import ApiError


def check_key(authorization: str | None, keys: Sequence[str]) -> None:
    """Accept ``Authorization: Bearer <key>`` when ``keys`` are set (else everything).

    Every key is compared with :func:`hmac.compare_digest` (no early exit on the first one), so
    timing does not tell which key or how much of one matched.
    """
    if not keys:
        return
    scheme, _, given = (authorization or "").partition(" ")
    token = given.strip().encode() if scheme.lower() == "bearer" else b""
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(token, key.encode())
    if not ok:
        raise ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 past ``max_bytes`` (by its Content-Length before
    anything is read, else while reading)."""
    too_big = ApiError(413, f"request body larger than {max_bytes} bytes", code="request_too_large")
    length = request.headers.get("content-length")
    if length is not None:
        try:
            if int(length) > max_bytes:
                raise too_big
        except ValueError:
            raise ApiError(400, "invalid Content-Length header") from None
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > max_bytes:
            raise too_big
    return bytes(body)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    """The body as JSON (400 when it is not; ``NaN`` and ``Infinity``, which Python's parser
    would accept, are not JSON and never reach a sampling option)."""
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})") from None
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply") from None


class Queue:
    """Counts chat requests in flight or waiting for the model; refuses one past ``limit``.

    Used from the event loop only (no lock needed): :meth:`enter` before the body is read,
    :meth:`leave` exactly once when the response is done or abandoned.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.depth = 0

    def enter(self) -> Slot:
        """A slot for one request, or 429 when ``limit`` requests already hold one."""
        if self.depth >= self.limit:
            raise ApiError(429, f"the server is busy: {self.limit} requests in flight; retry "
                           "later", type="rate_limit_error", code="queue_full",
                           headers={"Retry-After": "1"})
        self.depth += 1
        return Slot(self)


class Slot:
    """One request's place in a :class:`Queue`; :meth:`release` is idempotent."""

    def __init__(self, queue: Queue):
        self._queue: Queue | None = queue

    def release(self) -> None:
        """Give the place back (once; later calls do nothing)."""
        if self._queue is not None:
            self._queue.depth -= 1
            self._queue = None


__all__ = ["Queue", "Slot", "check_key", "parse_json", "read_body"]
