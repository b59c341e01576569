"""Load on a live `guardrail serve` (embedded model, llama.cpp, the server's default KV cache per
stream): 16 concurrent clients x 4 requests mixing policies and streaming all complete with the
answers the same requests get one by one; a client that leaves mid-stream leaves no live streams
behind; a burst over the queue bound gets 429s, never a hang or a crash."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from servers import running

from guardrail.serve import ServeConfig, create_app

pytestmark = pytest.mark.llamacpp

TOKENS = 10
PROMPTS = ["Name a color.", "What is rain?", "Say hello to Ann.", "Name a big city."]
JOBS = [(p, pol, stream) for p in PROMPTS for pol in ("plain", "balanced")
        for stream in (False, True)]  # 16 kinds of request


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Any]]:
    app = create_app(ServeConfig(policies=["plain", "balanced"], backend="llamacpp",
                                 max_tokens=64, max_queue=8, n_ctx=512))
    with running(app, start_timeout=300) as base:
        yield base, app.state.guardrail


def ask(http: Any, base: str, prompt: str, policy: str, stream: bool,
        tokens: int = TOKENS) -> tuple[int, str]:
    """(status, answer text) of one chat completion."""
    body = {"model": policy, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": tokens, "temperature": 0, "stream": stream}
    url = f"{base}/v1/chat/completions"
    if not stream:
        r = http.post(url, json=body, timeout=300)
        return r.status_code, (r.json()["choices"][0]["message"]["content"]
                               if r.status_code == 200 else "")
    text = []
    with http.stream("POST", url, json=body, timeout=300) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, ""
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for ch in json.loads(line[6:]).get("choices") or []:
                    text.append((ch.get("delta") or {}).get("content") or "")
    return 200, "".join(text)


def engines(state: Any) -> list[Any]:
    return list({id(e): e for e in (s.model.engine() for s in state.served.values())}.values())


def settled(state: Any) -> bool:
    return all(e.scheduler.stats().live_streams == 0 and e.scheduler.stats().running == 0
               for e in engines(state))


def wait_settled(state: Any, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not settled(state):
        assert time.monotonic() < end, [e.scheduler.stats() for e in engines(state)]
        time.sleep(0.05)


def test_sixteen_clients_four_requests_each_answer_as_one_by_one(
    server: tuple[str, Any],
) -> None:
    base, state = server
    with httpx.Client() as http:
        want = {job: ask(http, base, *job) for job in JOBS}  # one by one
    assert all(status == 200 and text for status, text in want.values())
    steps = sum(e.scheduler.stats().steps for e in engines(state))
    state.queue.limit = 64  # room for every client at once (the bound has its own test)
    try:
        def client(c: int) -> list[tuple[tuple[str, str, bool], tuple[int, str]]]:
            with httpx.Client() as http:
                jobs = [JOBS[(c + 5 * k) % len(JOBS)] for k in range(4)]
                return [(job, ask(http, base, *job)) for job in jobs]

        with ThreadPoolExecutor(16) as ex:
            results = [r for rs in ex.map(client, range(16)) for r in rs]
    finally:
        state.queue.limit = 8
    assert len(results) == 64
    for job, got in results:
        assert got == want[job], job
    batched_steps = sum(e.scheduler.stats().steps for e in engines(state)) - steps
    assert batched_steps < 64 * TOKENS  # requests shared decode steps
    wait_settled(state)


def test_a_client_that_leaves_mid_stream_leaves_no_streams(server: tuple[str, Any]) -> None:
    base, state = server
    body = {"model": "balanced", "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": 60, "temperature": 0, "stream": True}
    with httpx.Client() as http, http.stream(
        "POST", f"{base}/v1/chat/completions", json=body, timeout=120
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if '"content"' in line:
                break  # leave after the first text
    wait_settled(state)
    with httpx.Client() as http:  # and the server still answers
        assert ask(http, base, "Name a color.", "plain", False)[0] == 200


def test_a_burst_over_the_queue_bound_gets_429s_not_a_hang(server: tuple[str, Any]) -> None:
    base, state = server
    gate = threading.Barrier(64)

    def one(i: int) -> int:
        with httpx.Client() as http:
            gate.wait(30)
            return ask(http, base, PROMPTS[i % 4], ("plain", "balanced")[i % 2], i % 3 == 0,
                       tokens=6)[0]

    with ThreadPoolExecutor(64) as ex:
        codes = list(ex.map(one, range(64)))
    assert set(codes) <= {200, 429, 503}, codes
    assert codes.count(200) >= 8 and codes.count(429) + codes.count(503) >= 1
    wait_settled(state)
    with httpx.Client() as http:
        r = http.get(f"{base}/metrics")
        assert 'status="429"' in r.text and "guardrail_scheduler_live_streams 0.0" in r.text
