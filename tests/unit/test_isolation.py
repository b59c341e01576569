"""One bad request fails alone: a request that does not fit the context is an error of that
request only (loop ErrorEvent, engine, chat-model batch), on the fake backend (no model)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest
from fakes import FakeBackend
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage

import guardrail.langchain.calls as calls
from guardrail import GuardedChatModel
from guardrail.decoding.loop import ErrorEvent, FinishEvent, GenerationRequest, TokenEvent, decode
from guardrail.decoding.rules import PlainRule
from guardrail.engine import Engine, Generation
from guardrail.errors import ContextOverflowError
from guardrail.loading import engine_for
from guardrail.policy import load_policy

POEM = [{"role": "user", "content": "Write a poem about rain."}]
CATS = [{"role": "user", "content": "Write a poem about cats."}]
LONG = "hello " * 200  # 200 fake tokens: more than the context below


def plain(b: FakeBackend, msgs: list[dict[str, str]], **kw: Any) -> GenerationRequest:
    return GenerationRequest([b.encode_chat(msgs)], PlainRule(), **kw)


def test_loop_error_event_for_the_bad_request_and_the_others_decode() -> None:
    b = FakeBackend(n_ctx=64)
    reqs = [plain(b, POEM), plain(b, [{"role": "user", "content": LONG}]), plain(b, CATS)]
    events = list(decode(b, reqs, errors="event"))
    assert isinstance(events[0], ErrorEvent) and events[0].request == 1  # before any token
    assert isinstance(events[0].error, ContextOverflowError)
    assert "request 1: prompt of" in str(events[0].error)
    assert not [e for e in events[1:] if isinstance(e, ErrorEvent)]
    assert all(e.request != 1 for e in events if isinstance(e, (TokenEvent, FinishEvent)))
    done = {e.request: e.text for e in events if isinstance(e, FinishEvent)}
    assert done == {0: "Sure, here is a poem about rain.", 2: "Sure, here is a poem about cats."}
    assert b.opens == 1  # the two good ones in one batch


def test_loop_raises_by_default_before_decoding() -> None:
    b = FakeBackend(n_ctx=64)
    reqs = [plain(b, POEM), plain(b, [{"role": "user", "content": LONG}])]
    with pytest.raises(ContextOverflowError, match="request 1"):
        list(decode(b, reqs))
    assert b.opens == 0
    with pytest.raises(ValueError, match="errors must be"):
        list(decode(b, reqs, errors="ignore"))  # type: ignore[arg-type]


def test_generate_many_returns_the_error_in_its_slot() -> None:
    b = FakeBackend(n_ctx=64)
    engine = engine_for(b)
    policy = load_policy("plain")
    reqs = [engine.request(policy, m) for m in (POEM, [{"role": "user", "content": LONG}], CATS)]
    out = engine.generate_many(reqs, return_exceptions=True)
    assert isinstance(out[0], Generation) and out[0].text == "Sure, here is a poem about rain."
    assert isinstance(out[1], ContextOverflowError)
    assert isinstance(out[2], Generation) and out[2].text == "Sure, here is a poem about cats."
    with pytest.raises(ContextOverflowError, match="request 1"):
        engine.generate_many(reqs)  # the default still fails the call
    events = list(engine.stream(reqs, errors="event"))
    assert [e.request for e in events if isinstance(e, ErrorEvent)] == [1]
    assert sorted(e.request for e in events if isinstance(e, FinishEvent)) == [0, 2]


class _Runs(BaseCallbackHandler):
    def __init__(self) -> None:
        self.ended: list[UUID] = []
        self.errors: list[BaseException] = []

    def on_llm_end(self, response: Any, *, run_id: UUID, **kw: Any) -> None:
        self.ended.append(run_id)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kw: Any) -> None:
        self.errors.append(error)


@pytest.fixture
def small_fake(monkeypatch: pytest.MonkeyPatch) -> Engine:
    """Every chat-model call decodes on a fake engine with a 64-token context."""
    engine = engine_for(FakeBackend(n_ctx=64))
    monkeypatch.setattr(calls, "get_engine", lambda cfg: engine)
    return engine


def test_batch_fails_the_overlong_input_alone(small_fake: Engine) -> None:
    llm = GuardedChatModel(policy="plain", max_new_tokens=8)
    runs = _Runs()
    out = llm.batch(["Write a poem about rain.", LONG, "Write a poem about cats."],
                    config={"callbacks": [runs]}, return_exceptions=True)
    assert isinstance(out[0], AIMessage) and out[0].content == "Sure, here is a poem about rain"
    assert isinstance(out[1], ContextOverflowError) and "do not fit the context" in str(out[1])
    assert isinstance(out[2], AIMessage) and out[2].content == "Sure, here is a poem about cats"
    assert len(runs.ended) == 2 and runs.errors == [out[1]]
    # Without return_exceptions the batch raises before decoding; invoke and stream raise
    # the same clear message as before.
    opens = small_fake.backend.opens  # type: ignore[attr-defined]
    with pytest.raises(ContextOverflowError, match="request 1: prompt of"):
        llm.batch(["Write a poem about rain.", LONG])
    assert small_fake.backend.opens == opens  # type: ignore[attr-defined]
    with pytest.raises(ContextOverflowError,
                       match=r"request 0: prompt of \d+ tokens do not fit the context of 64"):
        llm.invoke(LONG)
    with pytest.raises(ContextOverflowError, match="request 0"):
        list(llm.stream(LONG))


async def test_abatch_fails_the_overlong_input_alone(small_fake: Engine) -> None:
    llm = GuardedChatModel(policy="plain", max_new_tokens=8)
    out = await llm.abatch([LONG, "Write a poem about cats."], return_exceptions=True)
    assert isinstance(out[0], ContextOverflowError)
    assert isinstance(out[1], AIMessage) and out[1].content
