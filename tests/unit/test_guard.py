"""The Guard (guardrail/guard.py): request rules before decoding, on_refusal after, the same
for every entry point; and the chat model on the fake backend (no model is loaded)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

import guardrail.langchain.calls as calls
from guardrail import GuardedChatModel
from guardrail.engine import Engine
from guardrail.errors import RefusalError
from guardrail.guard import Guard, last_user_text
from guardrail.policy import Policy

POEM = [{"role": "user", "content": "Write a poem about rain."}]
KILL = [{"role": "user", "content": "How do I kill a process?"}]


def policy(**over: Any) -> Policy:
    return Policy.model_validate({"name": "t", **over})


def test_last_user_text_skips_later_turns() -> None:
    msgs = [*KILL, {"role": "assistant", "content": "ok"}, {"role": "tool", "content": "x"}]
    assert last_user_text(msgs) == "How do I kill a process?"
    assert last_user_text([{"role": "system", "content": "s"}]) == ""


def test_rules_follow_policy_match_including_an_empty_message(fake_engine: Engine) -> None:
    p = policy(rules=[{"name": "k", "pattern": "kill", "action": "replace", "message": ""}],
               on_match={"action": "replace", "message": "policy text"})
    v = Guard(p, fake_engine).check_request(KILL)
    assert v is not None and v.rule == "k" and v.answers and v.message == ""
    assert Guard(p, fake_engine).check_request(POEM) is None


def test_a_raising_rule_raises_before_decoding(fake_engine: Engine) -> None:
    p = policy(rules=[{"name": "k", "pattern": "kill", "action": "raise"}])
    with pytest.raises(RefusalError, match="matched rule 'k'"):
        Guard(p, fake_engine).check_request(KILL)


def test_an_allowing_rule_is_reported_but_decodes(fake_engine: Engine) -> None:
    p = policy(rules=[{"name": "k", "pattern": "kill", "action": "allow"}])
    v = Guard(p, fake_engine).check_request(KILL)
    assert v is not None and not v.answers


def test_on_refusal_actions(fake_engine: Engine) -> None:
    refusal = "I'm sorry I cannot help with that."
    allow = Guard(policy(), fake_engine).review("q", refusal)
    assert allow.refusal.refused and allow.text == refusal and not allow.replaced
    rep = Guard(policy(on_refusal={"action": "replace", "message": "No."}), fake_engine)
    assert rep.holds_answer
    out = rep.review("q", refusal)
    assert out.text == "No." and out.replaced
    assert rep.review("q", "Sure, here it is.").text == "Sure, here it is."
    with pytest.raises(RefusalError, match="refusal"):
        Guard(policy(on_refusal={"action": "raise"}), fake_engine).review("q", refusal)


def test_the_detector_is_built_once_per_engine_and_settings(fake_engine: Engine) -> None:
    a = Guard(policy(), fake_engine).detector
    assert Guard(policy(name="other"), fake_engine).detector is a


@pytest.fixture
def on_fake(fake_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """Every chat-model call decodes on the fake engine."""
    monkeypatch.setattr(calls, "get_engine", lambda cfg: fake_engine)
    return fake_engine


def test_chat_model_answers_through_the_guard(on_fake: Engine) -> None:
    llm = GuardedChatModel(policy="plain")
    msg = llm.invoke([HumanMessage("Write a poem about rain.")])
    assert msg.content == "Sure, here is a poem about rain."
    meta = msg.response_metadata["guardrail"]
    assert meta["policy"] == "plain" and meta["refused"] is False
    refused = llm.invoke("How do I kill a process?")
    assert refused.response_metadata["guardrail"]["refused"] is True


def test_chat_model_rule_answers_without_decoding(on_fake: Engine) -> None:
    p = policy(rules=[{"name": "k", "pattern": "kill", "action": "replace", "message": "No."}])
    before = on_fake.backend.opens  # type: ignore[attr-defined]
    msg = GuardedChatModel(policy=p).invoke("How do I kill a process?")
    assert msg.content == "No." and msg.usage_metadata["output_tokens"] == 0  # type: ignore[index]
    assert msg.response_metadata["guardrail"]["matched_rule"] == "k"
    assert on_fake.backend.opens == before  # type: ignore[attr-defined]


def test_chat_model_replaces_a_refusal_and_streams_nothing_early(on_fake: Engine) -> None:
    p = policy(on_refusal={"action": "replace", "message": "No."})
    chunks = list(GuardedChatModel(policy=p).stream("How do I kill a process?"))
    assert [c.content for c in chunks if c.content] == ["No."]
    assert chunks[-1].response_metadata["guardrail"]["replaced"] is True


def test_chat_model_options_are_validated_by_the_policy_schema(on_fake: Engine) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        GuardedChatModel(policy="plain", max_tokens=0)
    with pytest.raises(ValueError, match="alpha"):
        GuardedChatModel(policy="adacd", alpha=-1)
    llm = GuardedChatModel(policy="adacd", max_tokens=3)
    msg = llm.invoke([SystemMessage("Please answer me."), HumanMessage("Write a poem about rain.")])
    assert msg.usage_metadata["output_tokens"] == 3  # type: ignore[index]


async def test_chat_model_async_and_batch_on_the_fake(on_fake: Engine) -> None:
    llm = GuardedChatModel(policy="plain")
    a = await llm.ainvoke("Write a poem about rain.")
    out = llm.batch(["Write a poem about rain.", "Write a poem about cats."])
    assert a.content == out[0].content == "Sure, here is a poem about rain."
    assert out[1].content == "Sure, here is a poem about cats."
    streamed = [c.content async for c in llm.astream("Write a poem about cats.")]
    assert "".join(str(c) for c in streamed) == out[1].content
