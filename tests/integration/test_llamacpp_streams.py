"""llama.cpp streams for continuous batching, on the embedded model: sequence ids from a pool,
streams added beside running ones, hidden-state reads on a context of their own whose prefill a
stream of the same prompt reuses, and per-stream KV caches in which batching changes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from guardrail.adapters.llamacpp import LlamaCppBackend, Prefill, PrefillCache

from guardrail.errors import BackendError
from guardrail.models import embedded_model_path

pytestmark = pytest.mark.llamacpp

TEXTS = ["Name a color.", "What is rain? Answer in one sentence, please.", "Say hi."]


@pytest.fixture(scope="module", params=["unified", "per_stream"])
def backend(request: pytest.FixtureRequest) -> Iterator[LlamaCppBackend]:
    b = LlamaCppBackend(embedded_model_path(), n_ctx=512, n_seq_max=4, n_threads=1,
                        kv=request.param)
    yield b
    b.close()


def prompts(b: LlamaCppBackend) -> list[list[int]]:
    return [b.encode_chat([{"role": "user", "content": t}]) for t in TEXTS]


def alone(b: LlamaCppBackend, ids: list[int], steps: int = 4) -> list[np.ndarray]:
    """Greedy logits of ``ids`` decoded by itself."""
    out = []
    with b.open([ids]) as s:
        for _ in range(steps):
            z = s.logits()[0]
            out.append(z)
            s.append([int(z.argmax())])
    return out


def test_streams_added_beside_running_ones_match_alone(backend: LlamaCppBackend) -> None:
    ps = prompts(backend)
    want = [alone(backend, p) for p in ps]
    with backend.open([ps[0]]) as s:
        got: list[list[np.ndarray]] = [[], [], []]
        z = s.logits()
        got[0].append(z[0])
        s.append([int(z[0].argmax())])
        chunks = list(s.add([ps[1], ps[2]]))  # joins while stream 0 runs
        assert sum(chunks) == len(ps[1]) + len(ps[2]) and s.n_live == 3
        for _ in range(3):
            z = s.logits()
            for i in range(3):
                got[i].append(z[i])
            s.append([int(r.argmax()) for r in z])
    if backend.kv == "per_stream":  # (unified: cells interleave, values may drift)
        assert all(np.array_equal(a, b) for a, b in zip(got[0], want[0]))
        assert all(np.array_equal(a, b) for a, b in zip(got[1][:3], want[1][:3]))
    assert backend.free_streams == backend.n_seq_max  # every sequence back in the pool


def test_the_pool_refuses_more_streams_than_it_has(backend: LlamaCppBackend) -> None:
    ps = prompts(backend)
    with backend.open([ps[0]] * 3):
        with pytest.raises(BackendError, match="1 of n_seq_max=4 free"):
            backend.open([ps[0]] * 2)
        with backend.open([ps[1]]) as one:  # the last free sequence is still usable
            assert one.n_live == 1
    assert backend.free_streams == 4


def test_a_hidden_state_read_spares_live_streams_and_its_prefill_is_reused(
    backend: LlamaCppBackend,
) -> None:
    ps = prompts(backend)
    want = alone(backend, ps[1])
    backend._prefills = PrefillCache()
    with backend.open([ps[0]]) as live:
        before = live.logits()
        h = backend.prompt_hidden_states(ps[1])  # between two steps of a live stream
        assert h.shape[0] == len(ps[1])
        assert np.array_equal(live.logits(), before)
        with backend.open([ps[1]]) as s:  # the same prompt: the read's prefill is loaded
            assert backend._prefills.hits == 1
            got = []
            for _ in range(4):
                z = s.logits()[0]
                got.append(z)
                s.append([int(z.argmax())])
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    assert np.array_equal(backend.prompt_hidden_states(ps[1]), h)  # reads are repeatable


def test_a_state_llama_cpp_refuses_falls_back_to_a_prefill(backend: LlamaCppBackend) -> None:
    ps = prompts(backend)
    want = alone(backend, ps[2], steps=2)
    backend._prefills = PrefillCache()
    backend._prefills.put(ps[2], lambda: Prefill(np.zeros(backend.vocab_size, np.float32),
                                                 b"not a llama.cpp state",
                                                 np.zeros((len(ps[2]), 1), np.float32)))
    with backend.open([ps[2]]) as s:
        z = s.logits()[0]
        s.append([int(z.argmax())])
        got = [z, s.logits()[0]]
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    assert backend.free_streams == backend.n_seq_max


def test_a_continued_read_computes_only_the_answer_and_does_not_depend_on_the_cache(
    backend: LlamaCppBackend,
) -> None:
    """The forced-path check's read: the prompt's cells from the probe read's prefill, the
    answer's tokens on top, equal whether or not the prompt was cached."""
    prompt = prompts(backend)[1]
    ids = prompt + backend.tokenize_text(" Rain is water that falls from clouds when drops of"
                                         " vapour grow too heavy to stay up in the air, and it"
                                         " waters crops, fills rivers and feeds lakes.")
    n = backend.n_batch
    assert len(prompt) % n and len(ids) // n > len(prompt) // n  # chunks cut differently
    backend._prefills = PrefillCache()
    cold = backend.continued_hidden_states(ids, len(prompt))  # nothing cached: reads the prompt
    assert backend._prefills.hits == 0
    head = backend.prompt_hidden_states(prompt)
    warm = backend.continued_hidden_states(ids, len(prompt))  # loads the prompt's cells
    assert backend._prefills.hits == 1
    assert np.array_equal(warm, cold)
    assert np.array_equal(warm[:len(prompt)], head)
    whole = backend.prompt_hidden_states(ids)
    assert warm.shape == whole.shape
    assert np.allclose(warm, whole, rtol=0, atol=1e-3 * float(np.abs(whole).max()))
    assert np.array_equal(backend.continued_hidden_states(ids, len(ids)), whole)  # no answer
