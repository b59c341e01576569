"""Hot reload through the chat model: a PolicySource as `policy=` follows its file, an edit
reaches the next call and a bad edit keeps the last good policy (no model: the fake backend)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import guardrail.langchain.calls as calls
from guardrail import GuardedChatModel
from guardrail.engine import Engine
from guardrail.policy import PolicySource


@pytest.fixture(autouse=True)
def on_fake(fake_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    monkeypatch.setattr(calls, "get_engine", lambda cfg: fake_engine)
    return fake_engine


def _write(path: Path, tokens: int, stamp: int) -> None:
    path.write_text(f"name: live\nsampling: {{max_new_tokens: {tokens}}}\n")
    os.utime(path, (stamp, stamp))  # distinct mtimes even within one clock tick


def test_edits_reach_the_next_call_and_a_bad_edit_keeps_the_last_good(tmp_path: Path) -> None:
    f = tmp_path / "live.yaml"
    _write(f, 3, 1_000_000)
    source = PolicySource(f, interval=0)
    llm = GuardedChatModel(policy=source)
    first = llm.invoke("Write a poem about rain.")
    assert first.usage_metadata["output_tokens"] == 3
    _write(f, 5, 1_000_100)
    assert llm.invoke("Write a poem about rain.").usage_metadata["output_tokens"] == 5
    f.write_text("name: live\nsampling: {max_new_tokens: -1}\n")
    os.utime(f, (1_000_200, 1_000_200))
    assert llm.invoke("Write a poem about rain.").usage_metadata["output_tokens"] == 5
    assert source.last_error is not None and "max_new_tokens" in str(source.last_error)


def test_a_plain_path_follows_its_file_too(tmp_path: Path) -> None:
    f = tmp_path / "live.yaml"
    _write(f, 2, 2_000_000)
    llm = GuardedChatModel(policy=str(f))
    assert llm.invoke("hi").usage_metadata["output_tokens"] == 2
    _write(f, 4, 2_000_100)
    assert llm.invoke("hi").usage_metadata["output_tokens"] == 4
