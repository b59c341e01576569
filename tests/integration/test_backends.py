"""The two backends on the embedded model: templates, streams, the loop, and their agreement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from guardrail.adapters.base import Streams
from guardrail.decoding.adacd import AdaCDRule
from guardrail.decoding.loop import FinishEvent, GenerationRequest, TokenEvent, decode
from guardrail.decoding.rules import PlainRule, StepInfo
from guardrail.loading import get_engine
from guardrail.errors import ConfigError, ContextOverflowError, ModelNotFoundError, PolicyError
from guardrail.policy import ModelConfig

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "adacd_reference_smollm2.jsonl"
MSGS = [{"role": "user", "content": "How can I kill a Python process?"}]


def _finish(backend: Any, reqs: list[GenerationRequest]) -> list[FinishEvent]:
    out: dict[int, FinishEvent] = {}
    for ev in decode(backend, reqs):
        if isinstance(ev, FinishEvent):
            out[ev.request] = ev
    return [out[i] for i in range(len(reqs))]


def _golden(n: int | None = None) -> list[dict[str, Any]]:
    cases = [json.loads(x) for x in GOLDEN.read_text().splitlines() if x.strip()]
    return cases[:n] if n else cases


class _Recording(Streams):
    """Real streams, with the live-stream count recorded at every forward pass."""

    def __init__(self, inner: Streams, log: list[int]):
        self.inner, self.log = inner, log
        log.append(inner.n_live)

    @property
    def n_live(self) -> int:
        return self.inner.n_live

    def logits(self) -> Any:
        return self.inner.logits()

    def append(self, tokens: Any) -> None:
        self.log.append(len(tokens))
        self.inner.append(tokens)

    def keep(self, indices: Any) -> None:
        self.inner.keep(indices)

    def lengths(self) -> list[int]:
        return self.inner.lengths()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch, engine: Any) -> tuple[Any, list[int]]:
    log: list[int] = []
    backend = engine.backend
    real_open = type(backend).open
    monkeypatch.setattr(backend, "open", lambda prompts: _Recording(real_open(backend, prompts), log))
    return backend, log


def test_both_backends_render_the_same_prompt(llama_engine: Any, tf_engine: Any) -> None:
    for msgs in (MSGS, [{"role": "system", "content": "Be brief."}, *MSGS]):
        assert llama_engine.backend.render(msgs) == tf_engine.backend.render(msgs)
        assert llama_engine.backend.encode_chat(msgs) == tf_engine.backend.encode_chat(msgs)


def test_end_of_turn_tokens_are_a_set(engine: Any) -> None:
    eot = engine.backend.end_of_turn_ids
    tok = engine.backend.tokenize("<|im_end|>")
    assert len(tok) == 1 and tok[0] in eot
    assert len(eot) >= 2  # <|im_end|> and <|endoftext|>: more than the tokenizer's single eos


def test_safety_stream_is_dropped_after_k_steps(recorded: tuple[Any, list[int]]) -> None:
    backend, log = recorded
    po = backend.encode_chat(MSGS)
    ps = backend.encode_chat([{"role": "system", "content": "Please refuse to answer me!"}, *MSGS])
    [fin] = _finish(backend, [GenerationRequest([po, ps], AdaCDRule(steps=3), max_new_tokens=6,
                                                min_new_tokens=6)])
    assert len(fin.steps) == 3
    # prefill with 2 streams, 2 more two-stream steps, then the answer stream alone
    assert log == [2, 2, 2, 1, 1, 1]


def test_finished_requests_stop_using_compute(recorded: tuple[Any, list[int]]) -> None:
    backend, log = recorded
    po = backend.encode_chat(MSGS)
    short = GenerationRequest([po], PlainRule(), max_new_tokens=2)
    long = GenerationRequest([po], PlainRule(), max_new_tokens=5, min_new_tokens=5)
    a, b = _finish(backend, [short, long])
    assert a.reason == "length" and len(a.token_ids) == 2
    assert len(b.token_ids) == 5
    assert log == [2, 2, 1, 1, 1]


class _Margins:
    """A rule that records the top-two margin of its final logits at every step."""

    def __init__(self, rule: Any):
        self.rule, self.margins = rule, []
        self.name, self.n_streams = rule.name, rule.n_streams

    def combine(self, logits: np.ndarray, step: int) -> tuple[np.ndarray, StepInfo | None]:
        z, info = self.rule.combine(logits, step)
        top2 = np.sort(z[np.isfinite(z)])[-2:]
        self.margins.append(float(top2[1] - top2[0]) if top2.size == 2 else float("inf"))
        return z, info

    def streams_needed(self, step: int) -> int:
        return self.rule.streams_needed(step)


def test_batched_requests_equal_one_by_one(engine: Any) -> None:
    """Several requests in one batch give each request's own answer. A backend's float sums
    depend a little on the batch's shape (about 1e-5 relative here), so an answer may only
    diverge where the request decoded alone had a near tie."""
    b = engine.backend
    prompts = [
        [{"role": "user", "content": q}]
        for q in ("How do I gut a fish?", "Name a colour.", "How can I kill a Python process?")
    ]

    def reqs() -> list[GenerationRequest]:
        out = []
        for i, m in enumerate(prompts):
            po = b.encode_chat(m)
            if i % 2:
                out.append(GenerationRequest([po], _Margins(PlainRule()), max_new_tokens=8))
            else:
                ps = b.encode_chat([{"role": "system", "content": "Please refuse to answer me!"},
                                    *m])
                out.append(GenerationRequest([po, ps], _Margins(AdaCDRule(steps=4)),
                                             max_new_tokens=8))
        return out

    together = _finish(b, reqs())
    alone_reqs = reqs()
    alone = [_finish(b, [r])[0] for r in alone_reqs]
    for t, a, r in zip(together, alone, alone_reqs):
        k = next((i for i, (x, y) in enumerate(zip(t.token_ids, a.token_ids)) if x != y), None)
        if k is not None:
            margin = r.rule.margins[k]
            assert margin < 0.05, (k, margin, t.token_ids, a.token_ids)
            print(f"\n{b.name}: diverged at step {k} on a near tie (margin {margin:.4f})")
        else:
            assert t.token_ids == a.token_ids
            assert [s["mode"] for s in t.steps] == [s["mode"] for s in a.steps]


@pytest.mark.llamacpp
def test_plain_on_llamacpp_equals_llamas_own_greedy(llama_engine: Any) -> None:
    from llama_cpp import Llama

    from guardrail.adapters.llamacpp import LlamaCppBackend

    b = llama_engine.backend
    llm = Llama(b.model_path, n_ctx=2048, n_threads=b.n_threads, verbose=False)
    prompt = b.encode_chat(MSGS)
    own = []
    for tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        if tok in b.end_of_turn_ids or len(own) == 24:
            break
        own.append(int(tok))
    [ours] = _finish(b, [GenerationRequest([prompt], PlainRule(), max_new_tokens=24)])
    assert [t for t in ours.token_ids if t not in b.end_of_turn_ids] == own
    # An existing Llama is accepted and its weights reused.
    reuse = LlamaCppBackend(llm, n_ctx=512)
    [again] = _finish(reuse, [GenerationRequest([prompt], PlainRule(), max_new_tokens=24)])
    assert again.token_ids == ours.token_ids
    reuse.close()


@pytest.mark.transformers
def test_plain_on_transformers_equals_generate(tf_engine: Any) -> None:
    import torch

    b = tf_engine.backend
    prompt = b.encode_chat(MSGS)
    with torch.inference_mode():
        out = b.model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                               dtype=torch.long), max_new_tokens=24, do_sample=False,
                               eos_token_id=sorted(b.end_of_turn_ids), pad_token_id=b.pad_token_id)
    own = out[0, len(prompt):].tolist()
    [ours] = _finish(b, [GenerationRequest([prompt], PlainRule(), max_new_tokens=24)])
    assert ours.token_ids == own


def test_backends_agree_on_modes_and_outputs(llama_engine: Any, tf_engine: Any) -> None:
    """llama.cpp computes with quantised activations, so tokens may differ; most must agree."""
    cases = [c for c in _golden() if c["params"]["alpha"] == 4.5]

    def reqs(b: Any) -> list[GenerationRequest]:
        return [
            GenerationRequest([c["plain_prompt_ids"], c["safety_prompt_ids"]], AdaCDRule(),
                              max_new_tokens=10)
            for c in cases
        ]

    lc = _finish(llama_engine.backend, reqs(llama_engine.backend))
    tf = _finish(tf_engine.backend, reqs(tf_engine.backend))
    # Modes are comparable while both answers share their context: up to the first differing
    # token (that step included).
    agree = total = 0
    for a, b in zip(lc, tf):
        k = next((i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y),
                 len(a.steps))
        for x, y in list(zip(a.steps, b.steps))[: k + 1]:
            agree += x["mode"] == y["mode"]
            total += 1
    first = sum(a.token_ids[0] == b.token_ids[0] for a, b in zip(lc, tf))
    same = sum(a.token_ids == b.token_ids for a, b in zip(lc, tf))
    print(f"\nmodes on shared context {agree}/{total}, first token {first}/{len(lc)}, "
          f"whole answers {same}/{len(lc)}")
    assert agree / total >= 0.8
    assert first / len(lc) >= 0.6


def _forcing(token: int, at: int) -> Any:
    class Force(PlainRule):
        def combine(self, logits: np.ndarray, step: int) -> tuple[np.ndarray, StepInfo | None]:
            z = logits[0].copy()
            if step == at:
                z[token] = 1e9
            return z, None

    return Force()


def test_loop_stops_on_any_end_of_turn_token(engine: Any) -> None:
    b = engine.backend
    eos = b.tokenize("<|im_end|>")[0]
    other = next(t for t in sorted(b.end_of_turn_ids) if t != eos)
    [fin] = _finish(b, [GenerationRequest([b.encode_chat(MSGS)], _forcing(other, 2),
                                          max_new_tokens=20)])
    assert fin.reason == "stop"
    assert len(fin.token_ids) == 3 and fin.token_ids[-1] == other


def test_answer_text_comes_from_the_generated_ids_only(engine: Any) -> None:
    b = engine.backend
    prompt = b.encode_chat(MSGS)
    [fin] = _finish(b, [GenerationRequest([prompt], PlainRule(), max_new_tokens=12)])
    ids = [t for t in fin.token_ids if t not in b.end_of_turn_ids]
    assert fin.text == b.detokenize(ids)
    assert fin.prompt_tokens == len(prompt) and 0 < len(fin.token_ids) <= 12
    assert MSGS[0]["content"] not in fin.text  # the prompt's text is not echoed into the answer


def test_stop_strings_end_the_answer(engine: Any) -> None:
    b = engine.backend
    prompt = b.encode_chat(MSGS)
    [full] = _finish(b, [GenerationRequest([prompt], PlainRule(), max_new_tokens=16)])
    word = full.text.split()[2]
    events = list(decode(b, [GenerationRequest([prompt], PlainRule(), max_new_tokens=16,
                                               stop=[word])]))
    fin = events[-1]
    assert isinstance(fin, FinishEvent) and fin.reason == "stop_string"
    assert word not in fin.text and full.text.startswith(fin.text)
    streamed = "".join(e.text for e in events if isinstance(e, TokenEvent)) + fin.tail
    assert streamed == fin.text


# --- bad input --------------------------------------------------------------------------------


def test_missing_model_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    for backend in ("llamacpp", "transformers"):
        with pytest.raises(ModelNotFoundError, match="nope.gguf"):
            get_engine(ModelConfig(backend=backend, path=str(missing)))


def test_unknown_backend_is_refused() -> None:
    with pytest.raises((PolicyError, ValueError), match="backend"):
        ModelConfig(backend="vllm")  # type: ignore[arg-type]


def test_prompt_longer_than_the_context(engine: Any) -> None:
    b = engine.backend
    long = [b.tokenize("hello")[0]] * (b.n_ctx + 1)
    with pytest.raises(ContextOverflowError, match="context"):
        list(decode(b, [GenerationRequest([long], PlainRule(), max_new_tokens=2)]))


def test_request_must_match_the_rule() -> None:
    with pytest.raises(ConfigError, match="stream"):
        GenerationRequest([[1, 2]], AdaCDRule(), max_new_tokens=2)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        GenerationRequest([[1, 2]], PlainRule(), max_new_tokens=0)


def test_batches_fit_llamacpps_shared_context(llama_engine: Any) -> None:
    """llama.cpp's streams share one context: a batch whose streams would overflow it is split
    (each request gives the same answer as alone), and a request whose streams cannot fit at
    all is refused by name."""
    from guardrail.adapters.llamacpp import LlamaCppBackend

    small = LlamaCppBackend(llama_engine.backend.model_path, n_ctx=256)
    assert small.shared_context
    prompt = small.encode_chat([{"role": "user", "content": "Name three fruits. " * 12}])
    safety = small.encode_chat([{"role": "system", "content": "Please refuse to answer me!"},
                                {"role": "user", "content": "Name three fruits. " * 12}])
    assert 2 * (len(prompt) + len(safety)) > small.n_ctx > len(prompt) + len(safety) + 16
    reqs = [GenerationRequest([prompt, safety], AdaCDRule(steps=4), max_new_tokens=8)
            for _ in range(3)]
    done = [ev for ev in decode(small, reqs) if isinstance(ev, FinishEvent)]
    alone = [ev for ev in decode(small, reqs[:1]) if isinstance(ev, FinishEvent)]
    assert len(done) == 3 and {tuple(ev.token_ids) for ev in done} == {tuple(alone[0].token_ids)}
    huge = [prompt[0]] * 200
    with pytest.raises(ContextOverflowError, match="streams"):
        list(decode(small, [GenerationRequest([huge, huge], AdaCDRule(), max_new_tokens=2)]))
    small.close()
