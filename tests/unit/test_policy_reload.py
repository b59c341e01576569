"""PolicySource: a changed file is picked up (checked at most once per interval); a bad edit
keeps the last good policy and logs why."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from guardrail.errors import PolicyError
from guardrail.policy import AdaCDStrategy, PolicySource


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str, bump: int) -> None:
    """Write ``text`` and move the mtime forward (filesystems may have coarse timestamps)."""
    path.write_text(text, encoding="utf-8")
    stamp = 1_700_000_000 + bump
    os.utime(path, (stamp, stamp))


def alpha(source: PolicySource) -> float:
    strategy = source.get().strategy
    assert isinstance(strategy, AdaCDStrategy)
    return strategy.alpha


def test_reload_on_change_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    write(path, "strategy: {kind: adacd, alpha: 1.0}\n", 0)
    clock = Clock()
    source = PolicySource(path, clock=clock)
    assert alpha(source) == 1.0 and source.files == [path]

    write(path, "strategy: {kind: adacd, alpha: 2.0}\n", 1)
    clock.now += 0.5
    assert alpha(source) == 1.0  # not looked at yet: less than a second since the last look
    clock.now += 0.5
    assert alpha(source) == 2.0
    assert source.reloads == 1

    clock.now += 5
    assert alpha(source) == 2.0 and source.reloads == 1  # unchanged file: no reload


def test_bad_edit_keeps_last_good_policy_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "p.yaml"
    write(path, "strategy: {kind: adacd, alpha: 1.0}\n", 0)
    clock = Clock()
    source = PolicySource(path, clock=clock)

    write(path, "strategy: {kind: adacd, alpah: 2.0}\n", 1)
    clock.now += 1
    with caplog.at_level(logging.WARNING, logger="guardrail.policy"):
        assert alpha(source) == 1.0
    assert "keeping the last good policy" in caplog.text
    assert "did you mean 'alpha'" in caplog.text
    assert isinstance(source.last_error, PolicyError)

    write(path, "strategy: {kind: adacd, alpha: 3.0}\n", 2)
    clock.now += 1
    assert alpha(source) == 3.0 and source.last_error is None


def test_change_in_an_extended_file_is_picked_up(tmp_path: Path) -> None:
    base, leaf = tmp_path / "base.yaml", tmp_path / "leaf.yaml"
    write(base, "strategy: {kind: adacd, alpha: 1.0}\n", 0)
    write(leaf, "extends: base.yaml\nsampling: {max_new_tokens: 8}\n", 0)
    clock = Clock()
    source = PolicySource(leaf, clock=clock)
    assert [p.name for p in source.files] == ["leaf.yaml", "base.yaml"]
    write(base, "strategy: {kind: adacd, alpha: 4.0}\n", 1)
    clock.now += 1
    assert alpha(source) == 4.0


def test_deleted_file_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    write(path, "strategy: {kind: adacd, alpha: 1.0}\n", 0)
    clock = Clock()
    source = PolicySource(path, clock=clock)
    path.unlink()
    clock.now += 1
    assert alpha(source) == 1.0
    assert source.last_error is not None and "no such policy file" in str(source.last_error)


def test_first_load_failure_raises(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    write(path, "strategy: {kind: nope}\n", 0)
    with pytest.raises(PolicyError, match="unknown strategy 'nope'"):
        PolicySource(path)


def test_default_source_follows_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDRAIL_POLICY", "permissive")
    assert PolicySource().get().name == "permissive"
