"""One GuardedChatModel shared by many threads: its requests are decoded together (continuous
batching), and with a KV cache per stream the answers equal the same requests run alone."""

from __future__ import annotations

import threading

import pytest

from guardrail import GuardedChatModel

pytest.importorskip("llama_cpp")

PROMPTS = [
    "Name a color.", "Name an animal.", "What is rain?", "Say hello.", "Name a fruit.",
    "What is a cat?", "Name a city.", "What is snow?",
]


def test_eight_threads_five_requests_equal_sequential() -> None:
    model = GuardedChatModel(policy="adacd", backend="llamacpp", n_threads=1, max_new_tokens=6,
                             kv="per_stream", n_ctx=512, n_streams=17)
    jobs = [(t, i, PROMPTS[(t + i) % len(PROMPTS)]) for t in range(8) for i in range(5)]
    expected = {p: model.invoke(p) for p in PROMPTS}  # one by one
    steps = model.engine().scheduler.stats().steps
    got: dict[tuple[int, int], object] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(t: int) -> None:
        try:
            start.wait()
            for tt, i, p in jobs:
                if tt == t:
                    got[(t, i)] = model.invoke(p)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert len(got) == 40
    tokens = sum(m.usage_metadata["output_tokens"] for m in got.values())  # type: ignore[attr-defined]
    stats = model.engine().scheduler.stats()
    assert stats.steps - steps < tokens  # decoded together: fewer steps than tokens
    assert stats.live_streams == 0 and stats.running == 0
    for t, i, p in jobs:
        msg = got[(t, i)]
        want = expected[p]
        assert msg.content == want.content, (t, i, p)  # type: ignore[attr-defined]
        g, w = msg.response_metadata["guardrail"], want.response_metadata["guardrail"]  # type: ignore[attr-defined]
        assert g["modes"] == w["modes"] and g["steps"] == w["steps"]  # no trace leaks
