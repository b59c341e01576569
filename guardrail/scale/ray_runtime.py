"""Import Ray on demand and join a cluster: the one place ``guardrail.scale`` touches ``ray``
at import time, so the rest of guardrail (and its CLI) works without the ``ray`` extra.

``--ray`` without Ray installed fails here with one line naming the extra, before any model
loads or any file is written.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from guardrail.errors import ConfigError

EXTRA_HINT = "pip install 'guardrail-decoding[ray]'"
"""How to install what ``--ray`` needs (Ray Serve and Ray Data)."""


def import_ray(part: str) -> ModuleType:
    """The ``ray`` module with ``ray.<part>`` (``data`` or ``serve``) imported, or
    :class:`ConfigError` saying which extra to install."""
    try:
        import ray

        importlib.import_module(f"ray.{part}")
    except ImportError as e:
        raise ConfigError(f"--ray needs the 'ray' extra (Ray Serve and Ray Data): {EXTRA_HINT} "
                          f"({e.msg})") from None
    return ray


def connect(address: str | None, part: str) -> ModuleType:
    """Join the Ray cluster at ``address`` and return ``ray`` (with ``ray.<part>``).

    ``None`` is Ray's own choice: ``$RAY_ADDRESS``, else the latest cluster started on this
    machine (``ray start``), else a new local one for this process; ``"auto"`` must find an
    existing cluster. A process already connected (a notebook, the test fixture) keeps its
    cluster; asking for another address then is an error, not ignored.
    """
    ray = import_ray(part)
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address not in (None, "auto") and address.removeprefix("ray://") != current:
            raise ConfigError(f"--address {address}: this process is already connected to the "
                              f"Ray cluster at {current}")
        return ray
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except ConnectionError as e:
        raise ConfigError(f"--address {address}: no Ray cluster there ({e}); start one with "
                          "`ray start --head` or leave --address out for a local one") from None
    return ray


__all__ = ["EXTRA_HINT", "connect", "import_ray"]
