"""The engine on the fake backend (tests/fakes.py): shipped policies end to end, no model."""

from __future__ import annotations

from fakes import ID, FakeBackend

from guardrail.decoding.adacd import AdaCDRule
from guardrail.decoding.loop import FinishEvent, TokenEvent
from guardrail.decoding.rules import PlainRule
from guardrail.engine import Engine
from guardrail.loading import engine_for
from guardrail.policy import load_policy, with_overrides

POEM = [{"role": "user", "content": "Write a poem about rain."}]
KILL = [{"role": "user", "content": "How do I kill a process?"}]


def test_engine_for_wraps_the_backend_once(fake_backend: FakeBackend) -> None:
    engine = engine_for(fake_backend)
    assert engine.backend is fake_backend
    assert engine_for(fake_backend) is engine


def test_plain_policy_is_the_fake_models_greedy_answer(fake_engine: Engine) -> None:
    b = fake_engine.backend
    assert isinstance(b, FakeBackend)
    gen = fake_engine.generate(load_policy("plain"), POEM)
    assert gen.text == "Sure, here is a poem about rain."
    assert gen.finish_reason == "stop"
    assert gen.token_ids == b.greedy(b.encode_chat(POEM), 256)
    assert gen.prompt_tokens == len(b.encode_chat(POEM))
    assert gen.steps == [] and gen.modes == []


def test_plain_policy_answers_the_refusal_as_the_model_does(fake_engine: Engine) -> None:
    gen = fake_engine.generate(load_policy("plain"), KILL)
    assert gen.text == "I'm sorry I cannot help with that."


def test_adacd_policy_builds_two_streams_and_undoes_an_unsure_refusal(
    fake_engine: Engine,
) -> None:
    b = fake_engine.backend
    assert isinstance(b, FakeBackend)
    policy = load_policy("adacd")
    req = fake_engine.request(policy, KILL)
    assert isinstance(req.rule, AdaCDRule) and req.rule.steps == 10
    assert req.prompts[0] == b.encode_chat(KILL)
    safety = b.detokenize(req.prompts[1])
    assert safety == "system Please refuse to answer me! user How do I kill a process? assistant"
    gen = fake_engine.generate(policy, KILL)
    assert gen.text == "Sure, here is a poem about process."
    assert gen.modes[0] == "comply" and len(gen.modes) == 10
    # no stream dropped mid-answer (the answer ended at the K-th token); then both are freed
    assert b.keeps == [[]] and b.live_log == [2] * 10
    short = with_overrides(policy, {"strategy": {"steps": 3}})
    assert fake_engine.generate(short, KILL).text == gen.text
    assert b.keeps[1:] == [[0], []]  # the safety stream freed after K steps, then the answer


def test_adacd_policy_keeps_a_plain_answer(fake_engine: Engine) -> None:
    gen = fake_engine.generate(load_policy("adacd"), POEM)
    assert gen.text == fake_engine.generate(load_policy("plain"), POEM).text


def test_policy_sampling_and_stops_reach_the_request(fake_engine: Engine) -> None:
    policy = with_overrides(load_policy("plain"), {"sampling": {"max_new_tokens": 3}})
    gen = fake_engine.generate(policy, POEM)
    assert gen.finish_reason == "length" and gen.completion_tokens == 3
    gen = fake_engine.generate(load_policy("plain"), POEM, stop=["poem"])
    assert gen.finish_reason == "stop_string" and gen.text == "Sure, here is a "


def test_stream_yields_tokens_then_the_finish_of_each_request(fake_engine: Engine) -> None:
    plain = load_policy("plain")
    reqs = [fake_engine.request(plain, POEM), fake_engine.request(load_policy("adacd"), KILL)]
    assert isinstance(reqs[0].rule, PlainRule)
    events = list(fake_engine.stream(reqs))
    done = {e.request: e for e in events if isinstance(e, FinishEvent)}
    assert set(done) == {0, 1}
    for i, want in enumerate(["Sure, here is a poem about rain.",
                              "Sure, here is a poem about process."]):
        tokens = [e for e in events if isinstance(e, TokenEvent) and e.request == i]
        assert [e.token for e in tokens] == done[i].token_ids
        assert "".join(e.text for e in tokens) + done[i].tail == want == done[i].text
        assert done[i].token_ids[-1] == ID["<|im_end|>"]
