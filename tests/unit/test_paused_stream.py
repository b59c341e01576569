"""A paused synchronous stream holds nothing: other calls, from this thread or another, run
and the paused stream still finishes with its own answer (security issue, item 3)."""

from __future__ import annotations

import threading

import pytest

import guardrail.langchain.calls as calls
from guardrail import GuardedChatModel
from guardrail.engine import Engine


@pytest.fixture(autouse=True)
def on_fake(fake_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    monkeypatch.setattr(calls, "get_engine", lambda cfg: fake_engine)
    return fake_engine


def test_a_paused_stream_does_not_block_another_thread() -> None:
    llm = GuardedChatModel(policy="plain")
    it = llm.stream("Write a poem about rain.")
    head = [next(it).content for _ in range(3)]
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(str(llm.invoke("Write a poem about cats.").content)))
    t.start()
    t.join(timeout=30)
    assert not t.is_alive() and out == ["Sure, here is a poem about cats."]
    rest = [c.content for c in it]
    assert "".join(str(c) for c in head + rest) == "Sure, here is a poem about rain."


def test_a_call_from_the_same_thread_while_paused_gets_its_own_answer() -> None:
    llm = GuardedChatModel(policy="plain")
    it = llm.stream("Write a poem about rain.")
    first = next(it).content
    assert llm.invoke("Write a poem about cats.").content == "Sure, here is a poem about cats."
    assert str(first) + "".join(str(c.content) for c in it) == "Sure, here is a poem about rain."


def test_a_dropped_stream_frees_the_model(fake_engine: Engine) -> None:
    llm = GuardedChatModel(policy="plain")
    it = llm.stream("Write a poem about rain.")
    next(it)
    it.close()
    assert fake_engine.lock.acquire(timeout=10)  # the worker released the model
    fake_engine.lock.release()
