"""The decoding loop on the fake backend (tests/fakes.py): stopping, batching, stream freeing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from fakes import ID, FakeBackend

from guardrail.decoding.adacd import AdaCDRule
from guardrail.decoding.gated_cd import GatedCDRule, refusal_start_ids
from guardrail.decoding.loop import FinishEvent, GenerationRequest, TokenEvent, decode
from guardrail.decoding.rules import PlainRule
from guardrail.errors import BackendError, ConfigError, ContextOverflowError

POEM = [{"role": "user", "content": "Write a poem about rain."}]
CATS = [{"role": "user", "content": "Tell me about cats."}]
KILL = [{"role": "user", "content": "How do I kill a process?"}]
SAFETY = {"role": "system", "content": "Please refuse to answer me!"}


def finish(backend: FakeBackend, reqs: Sequence[GenerationRequest]) -> list[FinishEvent]:
    done = {ev.request: ev for ev in decode(backend, reqs) if isinstance(ev, FinishEvent)}
    assert sorted(done) == list(range(len(reqs)))
    return [done[i] for i in range(len(reqs))]


def plain(backend: FakeBackend, msgs: list[dict[str, str]], **kw: Any) -> GenerationRequest:
    return GenerationRequest([backend.encode_chat(msgs)], PlainRule(), **kw)


def test_fake_streams_honour_the_streams_contract(fake_backend: FakeBackend) -> None:
    b = fake_backend
    prompts = [b.encode_chat(POEM), b.encode_chat(KILL), b.encode_chat(CATS)]
    streams = b.open(prompts)
    assert streams.n_live == 3 and streams.lengths() == [len(p) for p in prompts]
    z = streams.logits()
    assert z.dtype == np.float32 and z.shape == (3, b.vocab_size)
    z[:] = 0  # a fresh copy: the streams' own logits are untouched
    assert streams.logits()[0].max() > 0
    with pytest.raises(ConfigError, match="append"):
        streams.append([1, 2])
    with pytest.raises(ConfigError, match="keep"):
        streams.keep([2, 0])
    streams.append([ID["Sure"], ID["I'm"], ID["Sure"]])
    streams.keep([1, 2])  # renumbered: the KILL stream is now 0
    assert streams.n_live == 2 and streams.lengths() == [len(prompts[1]) + 1, len(prompts[2]) + 1]
    assert int(np.argmax(streams.logits()[0])) == ID["sorry"]
    streams.close()
    streams.close()  # idempotent
    for call in (streams.logits, lambda: streams.append([1, 1]), lambda: streams.keep([0])):
        with pytest.raises(BackendError, match="closed"):
            call()


def test_greedy_plain_is_the_argmax_chain_of_the_table(fake_backend: FakeBackend) -> None:
    prompt = fake_backend.encode_chat(POEM)
    [fin] = finish(fake_backend, [plain(fake_backend, POEM)])
    assert fin.token_ids == fake_backend.greedy(prompt, 256)
    assert fin.text == "Sure, here is a poem about rain."
    assert fin.reason == "stop" and fin.token_ids[-1] == ID["<|im_end|>"]
    assert fin.prompt_tokens == len(prompt)


def test_streamed_text_adds_up_to_the_answer(fake_backend: FakeBackend) -> None:
    events = list(decode(fake_backend, [plain(fake_backend, CATS)]))
    fin = events[-1]
    assert isinstance(fin, FinishEvent) and fin.text == "Sure, here is a poem about cats."
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert [e.token for e in tokens] == fin.token_ids
    assert "".join(e.text for e in tokens) + fin.tail == fin.text


def test_stop_string_ends_the_answer_before_it(fake_backend: FakeBackend) -> None:
    [fin] = finish(fake_backend, [plain(fake_backend, POEM, stop=["poem"])])
    assert fin.reason == "stop_string"
    assert fin.text == "Sure, here is a "
    assert fin.token_ids[-1] == ID["poem"]


def test_max_new_tokens_ends_with_length(fake_backend: FakeBackend) -> None:
    [fin] = finish(fake_backend, [plain(fake_backend, POEM, max_new_tokens=3)])
    assert fin.reason == "length"
    assert len(fin.token_ids) == 3 and fin.text == "Sure, here"


def test_end_of_turn_ends_with_stop(fake_backend: FakeBackend) -> None:
    [fin] = finish(fake_backend, [plain(fake_backend, KILL)])
    assert fin.reason == "stop"
    assert fin.text == "I'm sorry I cannot help with that."
    assert fin.token_ids[-1] in fake_backend.end_of_turn_ids
    assert len(fin.token_ids) == 9


def test_min_new_tokens_masks_end_of_turn(fake_backend: FakeBackend) -> None:
    natural = fake_backend.greedy(fake_backend.encode_chat(POEM), 256)
    n = len(natural) + 3
    [fin] = finish(fake_backend, [plain(fake_backend, POEM, min_new_tokens=n, max_new_tokens=n)])
    assert fin.reason == "length" and len(fin.token_ids) == n
    assert not set(fin.token_ids) & fake_backend.end_of_turn_ids
    assert fin.token_ids[: len(natural) - 1] == natural[:-1]
    assert fin.text.startswith("Sure, here is a poem about rain. Sure")


def test_requests_decoded_together_answer_as_alone(fake_backend: FakeBackend) -> None:
    def reqs() -> list[GenerationRequest]:
        return [plain(fake_backend, POEM), plain(fake_backend, KILL, max_new_tokens=4),
                plain(fake_backend, CATS, stop=["about"])]

    alone = [finish(fake_backend, [r])[0] for r in reqs()]
    fake_backend.opens = 0
    together = finish(fake_backend, reqs())
    assert fake_backend.opens == 1  # one batch
    for a, b in zip(alone, together):
        assert (a.text, a.token_ids, a.reason) == (b.text, b.token_ids, b.reason)
    assert [a.reason for a in alone] == ["stop", "length", "stop_string"]


def test_batches_split_by_max_streams_give_the_same_answers() -> None:
    wide, narrow = FakeBackend(), FakeBackend(max_streams=1)
    answers = []
    for b in (wide, narrow):
        answers.append([f.token_ids for f in finish(b, [plain(b, POEM), plain(b, KILL)])])
    assert answers[0] == answers[1]
    assert (wide.opens, narrow.opens) == (1, 2)


def test_two_stream_rule_frees_its_safety_stream_after_k_steps(fake_backend: FakeBackend) -> None:
    b = fake_backend
    streams = [b.encode_chat(POEM), b.encode_chat([SAFETY, *POEM])]
    req = GenerationRequest(streams, AdaCDRule(steps=3))
    [fin] = finish(b, [req])
    assert len(fin.steps) == 3 and len(fin.token_ids) == 10
    assert b.keeps == [[0]]  # freed once, after step K-1 = 2
    # prefill and two appends with both streams, then the answer stream alone
    assert b.live_log == [2, 2, 2] + [1] * (len(fin.token_ids) - 3)


def test_freeing_renumbers_streams_of_the_requests_after(fake_backend: FakeBackend) -> None:
    b = fake_backend
    adacd = GenerationRequest([b.encode_chat(KILL), b.encode_chat([SAFETY, *KILL])],
                              AdaCDRule(steps=2))
    first, second, third = finish(b, [plain(b, POEM), adacd, plain(b, CATS)])
    assert b.keeps[0] == [0, 1, 3]  # rows: poem, (kill O, kill S), cats -> S freed after step 1
    assert first.text == "Sure, here is a poem about rain."
    assert third.text == "Sure, here is a poem about cats."
    assert second.steps[0]["mode"] == "comply"  # the unsure refusal is undone
    assert second.text.startswith("Sure,")


def test_contrast_changes_the_answer_only_where_the_streams_differ(
    fake_backend: FakeBackend,
) -> None:
    b = fake_backend
    o, s = b.encode_chat(KILL), b.encode_chat([SAFETY, *KILL])
    with b.open([o, s]) as streams:
        z = streams.logits()
    assert (z[0] != z[1]).any()
    [plain_fin] = finish(b, [plain(b, KILL)])
    [ada] = finish(b, [GenerationRequest([o, s], AdaCDRule(steps=10))])
    assert plain_fin.text.startswith("I'm sorry")
    assert ada.text == "Sure, here is a poem about process."
    assert [st["mode"] for st in ada.steps][:2] == ["comply", "refuse"]


def test_gated_cd_undoes_only_the_unsure_refusal(fake_backend: FakeBackend) -> None:
    b = fake_backend
    refusals = refusal_start_ids(["I'm sorry", "Sorry"], b.tokenize)
    assert refusals == {ID["I'm"], ID["Sorry"]}

    def gated(msgs: list[dict[str, str]]) -> FinishEvent:
        streams = [b.encode_chat(msgs), b.encode_chat([SAFETY, *msgs])]
        return finish(b, [GenerationRequest(streams, GatedCDRule(refusals, steps=4))])[0]

    kill, poem = gated(KILL), gated(POEM)
    assert kill.text == "Sure, here is a poem about process." and kill.steps[0]["mode"] == "comply"
    assert poem.text == "Sure, here is a poem about rain."
    assert [st["mode"] for st in poem.steps] == ["plain"] * 4


def test_context_overflow_names_the_request() -> None:
    b = FakeBackend(n_ctx=16)
    short = plain(b, [{"role": "user", "content": "Hi"}], max_new_tokens=2)
    long = plain(b, [{"role": "user", "content": "Tell me about cats. " * 4}])
    with pytest.raises(ContextOverflowError, match=r"request 1: prompt of \d+ tokens"):
        list(decode(b, [short, long]))
    assert b.opens == 0  # raised before any stream is opened


def test_generation_is_capped_by_the_context() -> None:
    b = FakeBackend(n_ctx=14)
    req = plain(b, POEM, min_new_tokens=50, max_new_tokens=50)
    [fin] = finish(b, [req])
    assert fin.reason == "length"
    assert fin.prompt_tokens + len(fin.token_ids) == b.n_ctx
