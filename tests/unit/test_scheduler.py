"""Continuous batching (guardrail/scheduler.py) on the fake backend: requests from many callers
decode together, join a running batch, leave it when cancelled, and answer as if alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fakes import FakeBackend, FakeStreams

from guardrail.decoding.loop import ErrorEvent, FinishEvent, GenerationRequest, TokenEvent
from guardrail.decoding.rules import PlainRule
from guardrail.engine import Engine
from guardrail.errors import BackendError, ContextOverflowError
from guardrail.locks import EngineLock
from guardrail.policy import load_policy

PROMPTS = ["Write a poem about rain.", "Write a poem about cats.", "How do I kill a process?",
           "Tell me about bread.", "Write a poem about bread.", "Tell me about cats."]


def _request(engine: Engine, text: str, policy: str = "plain", n: int = 256,
             run_on: int = 0) -> GenerationRequest:
    req = engine.request(load_policy(policy), [{"role": "user", "content": text}])
    req.max_new_tokens = n
    req.min_new_tokens = run_on  # the fake model runs on ("... . Sure , here ...") until then
    return req


def _alone(backend: FakeBackend, req: GenerationRequest) -> list[int]:
    """The request decoded by itself on a fresh engine."""
    return Engine(backend).generate_many([req])[0].token_ids


def _wait(cond: object, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.005)


def _settled(engine: Engine) -> bool:
    s = engine.scheduler.stats()
    return s.running == 0 and s.prefilling == 0 and s.waiting == 0 and s.live_streams == 0


@pytest.mark.parametrize("addable", [True, False])
@pytest.mark.parametrize("policy", ["plain", "adacd"])
def test_many_threads_decode_together_and_answer_as_alone(policy: str, addable: bool) -> None:
    # a step takes a little time, so the six released together are live together however the
    # threads are scheduled (with instant steps one request could finish before the next came)
    backend = FakeBackend(addable=addable, step_s=0.005)
    engine = Engine(backend)
    jobs = [PROMPTS[i % len(PROMPTS)] for i in range(12)]
    want = {p: _alone(backend, _request(engine, p, policy, run_on=12)) for p in PROMPTS}
    gate = threading.Barrier(6)

    def one(p: str) -> list[int]:
        if jobs.index(p) < 6:
            gate.wait()
        return engine.generate_many([_request(engine, p, policy, run_on=12)])[0].token_ids

    with ThreadPoolExecutor(6) as ex:
        got = list(ex.map(one, jobs))
    assert got == [want[p] for p in jobs]
    stats = engine.scheduler.stats()
    assert stats.steps < sum(map(len, got))  # steps were shared
    assert max(backend.live_log) > 2 * (2 if policy == "adacd" else 1)
    _wait(lambda: _settled(engine))


def test_a_request_joins_a_running_batch() -> None:
    backend = FakeBackend(step_s=0.01)
    engine = Engine(backend)
    long = engine.stream([_request(engine, PROMPTS[0], n=40, run_on=40)])
    first = next(long)  # the long request is running
    assert isinstance(first, TokenEvent)
    short_req = _request(engine, PROMPTS[1], n=5, run_on=5)
    short = engine.generate_many([short_req])[0]  # answered while the long one still runs
    assert engine.scheduler.stats().running == 1
    rest = list(long)
    fin = rest[-1]
    assert isinstance(fin, FinishEvent) and len(fin.token_ids) == 40
    t = fin.timings  # the trace's timings: stages add up to the whole
    assert set(t) == {"queue_s", "prefill_s", "first_token_s", "decode_s", "total_s"}
    assert t["decode_s"] > 0.3  # 40 steps of 10 ms
    assert abs(t["first_token_s"] + t["decode_s"] - t["total_s"]) < 1e-6
    assert t["queue_s"] + t["prefill_s"] <= t["first_token_s"]
    assert short.token_ids == _alone(backend, _request(engine, PROMPTS[1], n=5, run_on=5))
    assert fin.token_ids == _alone(backend, _request(engine, PROMPTS[0], n=40, run_on=40))


def test_closing_a_stream_frees_its_streams_and_spares_the_others() -> None:
    engine = Engine(FakeBackend(step_s=0.01))
    other = engine.stream([_request(engine, PROMPTS[1], n=30, run_on=30)])
    next(other)
    gone = engine.stream([_request(engine, PROMPTS[0], "adacd", n=30, run_on=30)])
    next(gone)
    _wait(lambda: engine.scheduler.stats().running == 2)
    gone.close()  # a client that went away
    _wait(lambda: engine.scheduler.stats().live_streams == 1)
    assert engine.scheduler.stats().running == 1
    fin = list(other)[-1]
    assert isinstance(fin, FinishEvent) and len(fin.token_ids) == 30
    _wait(lambda: _settled(engine))


def test_admission_respects_the_stream_slots() -> None:
    backend = FakeBackend(max_streams=3)  # 2 slots for requests, 1 kept for probes
    engine = Engine(backend)
    reqs = [_request(engine, p, run_on=8) for p in PROMPTS]
    with ThreadPoolExecutor(6) as ex:
        got = list(ex.map(lambda r: engine.generate_many([r])[0].token_ids, reqs))
    assert max(backend.live_log) <= 2
    assert got == [_alone(FakeBackend(), _request(engine, p, run_on=8)) for p in PROMPTS]


def test_context_errors_raise_before_queueing_or_fail_alone() -> None:
    engine = Engine(FakeBackend(n_ctx=64))
    big = _request(engine, "rain " * 80)
    ok = _request(engine, PROMPTS[0])
    with pytest.raises(ContextOverflowError, match="request 1"):
        engine.scheduler.submit([ok, big])
    assert engine.scheduler.stats().waiting == 0
    events = list(engine.stream([ok, big], errors="event"))
    assert isinstance(events[0], ErrorEvent) and events[0].request == 1
    assert [e.request for e in events if isinstance(e, FinishEvent)] == [0]


def test_a_failed_step_fails_the_running_requests_and_the_next_one_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = Engine(FakeBackend())
    real = FakeStreams._append
    calls = {"n": 0}

    def flaky(self: FakeStreams, tokens: list[int]) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise BackendError("device lost")
        real(self, tokens)

    monkeypatch.setattr(FakeStreams, "_append", flaky)
    with pytest.raises(BackendError, match="device lost"):
        engine.generate_many([_request(engine, PROMPTS[0])])
    assert engine.generate(load_policy("plain"), [{"role": "user", "content": PROMPTS[0]}]).text
    _wait(lambda: _settled(engine))


def test_a_waiting_lock_taker_runs_between_steps() -> None:
    """A caller that needs the model (a probe) gets the lock before a long answer ends."""
    engine = Engine(FakeBackend(step_s=0.01))
    events = engine.stream([_request(engine, PROMPTS[0], n=60, run_on=60)])
    next(events)
    steps_at = []
    with engine.lock:  # fair: queued behind nothing but the current step
        steps_at.append(engine.scheduler.stats().steps)
    rest = list(events)
    assert steps_at[0] < 40 and len(rest) > 20
    _wait(lambda: _settled(engine))


def test_a_request_that_must_run_alone_waits_for_the_running_ones() -> None:
    engine = Engine(FakeBackend(step_s=0.01))
    running = engine.stream([_request(engine, PROMPTS[1], n=30, run_on=30)])
    next(running)
    seen: list[tuple[int, str]] = []

    def alone() -> Iterator[int]:  # runs on the scheduler's thread, nothing else decoding
        for i in range(3):
            seen.append((engine.scheduler.stats().running, threading.current_thread().name))
            yield i

    got: list[int] = []
    t = threading.Thread(target=lambda: got.extend(engine.scheduler.alone(alone)))
    t.start()
    waiting = engine.stream([_request(engine, PROMPTS[0], n=5)])  # queued behind it
    list(running)
    t.join(5)
    assert got == [0, 1, 2]
    assert seen == [(0, "guardrail-scheduler")] * 3
    assert isinstance(list(waiting)[-1], FinishEvent)


def test_calls_run_on_the_scheduler_thread_between_steps() -> None:
    engine = Engine(FakeBackend(step_s=0.01))
    events = engine.stream([_request(engine, PROMPTS[0], n=40, run_on=40)])
    next(events)
    where = engine.run(lambda: (threading.current_thread().name,
                                engine.scheduler.stats().running))
    assert where == ("guardrail-scheduler", 1)  # while the other request still runs
    with pytest.raises(ZeroDivisionError):  # the caller gets the job's error
        engine.run(lambda: 1 / 0)
    assert isinstance(list(events)[-1], FinishEvent)
    with engine.lock:  # a thread holding the lock runs the job itself
        assert engine.run(threading.current_thread) is threading.current_thread()


def test_the_thread_exits_when_idle_and_starts_again(monkeypatch: pytest.MonkeyPatch) -> None:
    import guardrail.scheduler as sched

    monkeypatch.setattr(sched, "IDLE_EXIT_S", 0.05)
    engine = Engine(FakeBackend())
    engine.generate_many([_request(engine, PROMPTS[0])])
    _wait(lambda: engine.scheduler._thread is None)
    assert engine.generate_many([_request(engine, PROMPTS[0])])[0].text


def _plain(backend: FakeBackend, ids: list[int]) -> GenerationRequest:
    return GenerationRequest(prompts=[ids], rule=PlainRule(), max_new_tokens=3)


def test_backend_add_prefills_in_chunks_then_joins() -> None:
    backend = FakeBackend(chunk=4)
    ids = backend.encode_chat([{"role": "user", "content": PROMPTS[0]}])
    with backend.open([ids]) as s:
        chunks: Iterator[int] = s.add([ids, ids])
        sizes = list(chunks)
        assert sum(sizes) == 2 * len(ids) and max(sizes) <= 4
        assert s.n_live == 3
        assert (s.logits()[1] == s.logits()[0]).all()


def test_engine_lock_is_reentrant_fair_and_owned() -> None:
    lock = EngineLock()
    order: list[int] = []
    with lock, lock:
        assert lock.held_by_me()
        threads = [threading.Thread(target=lambda i=i: (lock.acquire(), order.append(i),
                                                        lock.release())) for i in range(4)]
        for i, t in enumerate(threads):
            t.start()
            _wait(lambda i=i: lock.waiting == i + 1)
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3]  # in arrival order
    with pytest.raises(RuntimeError, match="does not hold"):
        lock.release()
    assert lock.acquire(timeout=0.01)
    lock.release()


def test_crossed_routed_requests_take_their_locks_in_one_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Engine A decodes on B's model while B decodes on A's: both scheduler threads start
    their lone request at the same moment (a barrier), which is when a thread that already
    held its own engine's lock would wait for the other's for ever."""
    from guardrail.adapters.routed import RoutedBackend

    a, b = Engine(FakeBackend()), Engine(FakeBackend())
    barrier = threading.Barrier(2)
    original = Engine._alone

    def in_step(self: Engine, *args: object, **kw: object) -> Iterator[object]:
        barrier.wait(timeout=60)  # generous: a loaded machine may start one thread late
        yield from original(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Engine, "_alone", in_step)

    def routed(own: Engine, other: Engine) -> GenerationRequest:
        req = _request(own, "Write a poem about rain.", n=6)
        req.backend = RoutedBackend([own.backend, other.backend], [1],
                                    locks=[own.lock, other.lock])
        return req

    out: dict[str, list[int]] = {}

    def run(name: str, own: Engine, other: Engine) -> None:
        out[name] = own.generate_many([routed(own, other)])[0].token_ids

    threads = [threading.Thread(target=run, args=("a", a, b), daemon=True),
               threading.Thread(target=run, args=("b", b, a), daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert out["a"] == out["b"] == _alone(FakeBackend(), _request(a, "Write a poem about rain.",
                                                                  n=6))
