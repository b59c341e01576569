"""Pick up a changed policy file without restarting the process.

:class:`PolicySource` holds the last good policy. On :meth:`PolicySource.get` it looks at the
modification times of the policy file and every file it ``extends`` (at most once per
``interval`` seconds) and reloads when one changed. A reload that fails keeps the last good
policy and logs why, so a half-saved edit never takes a running service down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from guardrail.errors import PolicyError
from guardrail.policy.loader import load_policy_file
from guardrail.policy.schema import Policy

logger = logging.getLogger("guardrail.policy")


def _mtimes(files: list[Path]) -> tuple[float | None, ...]:
    out: list[float | None] = []
    for f in files:
        try:
            out.append(f.stat().st_mtime_ns)
        except OSError:
            out.append(None)  # deleted: a change too; the reload will say why it failed
    return tuple(out)


class PolicySource:
    """A policy that follows its file.

    Args:
        name_or_path: shipped name or YAML path; ``None`` means the default policy.
        interval: least seconds between two looks at the files (1 by default).
        env: replaces ``os.environ`` for ``${VAR}`` interpolation (tests).
        clock: monotonic clock in seconds (tests).

    Raises:
        PolicyError: the first load fails (there is no good policy to keep yet).
    """

    def __init__(
        self,
        name_or_path: str | Path | None = None,
        *,
        interval: float = 1.0,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.ref = name_or_path
        self.interval = interval
        self._env = env
        self._clock = clock
        self._lock = threading.Lock()
        loaded = load_policy_file(name_or_path, env=env)
        self._policy = loaded.policy
        self._files = loaded.files
        self._stamp = _mtimes(self._files)
        self._checked = clock()
        self.last_error: PolicyError | None = None
        self.reloads = 0

    @property
    def files(self) -> list[Path]:
        """The policy file and the files it extends, child first."""
        return list(self._files)

    def get(self) -> Policy:
        """The current policy, reloaded first if a file changed (checked once per interval)."""
        with self._lock:
            now = self._clock()
            if now - self._checked >= self.interval:
                self._checked = now
                stamp = _mtimes(self._files)
                if stamp != self._stamp:
                    self._stamp = stamp
                    self._reload()
            return self._policy

    def reload(self) -> Policy:
        """Reload now, whatever the modification times say."""
        with self._lock:
            self._reload()
            return self._policy

    def _reload(self) -> None:
        try:
            loaded = load_policy_file(self.ref, env=self._env)
        except PolicyError as e:
            self.last_error = e
            logger.warning(
                "policy %s changed but failed to load; keeping the last good policy %r:\n%s",
                self.ref,
                self._policy.name,
                e,
            )
            return
        self._policy = loaded.policy
        self._files = loaded.files
        self._stamp = _mtimes(self._files)
        self.last_error = None
        self.reloads += 1
        logger.info("policy %s reloaded", self.ref)


__all__ = ["PolicySource"]
