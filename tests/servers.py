"""Run an ASGI app on 127.0.0.1 in a background thread for a test (uvicorn, a free port, bounded
waits for start and stop)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(app: Any, *, start_timeout: float = 120.0, stop_timeout: float = 30.0
            ) -> Iterator[str]:
    """Serve ``app`` while the block runs; yields its base URL (``http://127.0.0.1:PORT``).

    Startup (the app's lifespan: model loading) must finish within ``start_timeout`` seconds;
    stopping sets ``should_exit`` and waits at most ``stop_timeout`` for in-flight requests.
    """
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the test server stopped during startup (see its log)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"the test server did not start within {start_timeout} s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(stop_timeout)
        if thread.is_alive():  # pragma: no cover - a hang is the failure being reported
            server.force_exit = True
            thread.join(5)
            raise TimeoutError(f"the test server did not stop within {stop_timeout} s")
