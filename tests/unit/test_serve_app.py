"""``guardrail serve`` on the fake backend: the OpenAI wire format, the operator/caller boundary
and the bounds (auth, body size, token cap, queue), through the real FastAPI app."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

import fakes
import httpx
from fastapi.testclient import TestClient
from servers import running
from typer.testing import CliRunner

from guardrail.engine import Engine
from guardrail.langchain import calls
from guardrail.serve import ServeConfig, ServeConfigError, create_app, load_serve_config
from guardrail.serve.config import with_env_keys

POEM = [{"role": "user", "content": "Write a poem about rain."}]
RAIN = "Sure, here is a poem about rain."


@pytest.fixture(autouse=True)
def on_fake(fake_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    monkeypatch.setattr(calls, "get_engine", lambda cfg: fake_engine)
    return fake_engine


@pytest.fixture
def serve() -> Iterator[Callable[..., TestClient]]:
    """``serve(**config)``: a started TestClient of an app with that config."""
    clients: list[TestClient] = []

    def make(**kw: Any) -> TestClient:
        client = TestClient(create_app(ServeConfig(**{"policies": ["plain", "adacd"], **kw})))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def chat(client: TestClient, **body: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": "plain", "messages": POEM, **body})


def events(text: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body (JSON decoded, ``[DONE]`` as is)."""
    out = []
    for block in text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            data = block[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if param is not None:
        assert err["param"] == param, err
    return err


# ------------------------------------------------------------------------------ the API


def test_models_list_and_health(serve: Callable[..., TestClient]) -> None:
    c = serve()
    models = c.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["plain", "adacd"]
    assert all(m["object"] == "model" and m["owned_by"] == "guardrail" for m in models["data"])
    assert c.get("/v1/models/adacd").json()["guardrail"]["strategy"] == "adacd"
    assert_error(c.get("/v1/models/strict"), 404)
    health = c.get("/health").json()
    assert health["status"] == "ok" and health["loaded"] is True
    assert health["models"] == {"plain": True, "adacd": True}
    lazy = serve(preload=False)
    assert lazy.get("/health").json()["models"] == {"plain": False, "adacd": False}
    chat(lazy)
    assert lazy.get("/health").json()["models"] == {"plain": True, "adacd": False}
    keyed = serve(api_keys=["k"]).get("/health").json()
    assert keyed["status"] == "ok" and "models" not in keyed


def test_completion(serve: Callable[..., TestClient]) -> None:
    body = chat(serve()).json()
    assert body["object"] == "chat.completion" and body["model"] == "plain"
    assert body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": RAIN, "refusal": None}
    assert choice["finish_reason"] == "stop"
    u = body["usage"]
    assert u["completion_tokens"] > 0 and u["total_tokens"] == u["prompt_tokens"] + u[
        "completion_tokens"]
    trace = body["guardrail"]
    assert trace["policy"] == "plain" and trace["strategy"] == "plain"
    assert trace["refused"] is False and "steps" not in trace
    assert set(trace["timings"]) >= {"queue_s", "first_token_s", "total_s"}  # the scheduler's


def test_options_reach_the_model(serve: Callable[..., TestClient]) -> None:
    c = serve()
    body = chat(c, max_tokens=3, temperature=0.0, seed=1, top_p=1.0).json()
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["finish_reason"] == "length"
    assert chat(c, max_completion_tokens=2).json()["usage"]["completion_tokens"] == 2
    assert chat(c, stop=["poem"]).json()["choices"][0]["message"]["content"].rstrip() == (
        "Sure, here is a")
    ext = chat(c, model="ignored", guardrail={"policy": "adacd"}).json()
    assert ext["model"] == "adacd" and ext["guardrail"]["strategy"] == "adacd"
    assert len(ext["guardrail"]["modes"]) > 0


def test_sse_stream(serve: Callable[..., TestClient]) -> None:
    c = serve()
    r = chat(c, stream=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    ev = events(r.text)
    assert ev[-1] == "[DONE]"
    chunks = ev[:-1]
    assert all(x["object"] == "chat.completion.chunk" and x["model"] == "plain" for x in chunks)
    assert len({x["id"] for x in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(x["choices"][0]["delta"].get("content", "") for x in chunks)
    assert text == RAIN
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop" and last["guardrail"]["policy"] == "plain"
    assert all(x["choices"][0]["finish_reason"] is None for x in chunks[:-1])
    assert all("usage" not in x for x in chunks)

    ev = events(chat(c, stream=True, stream_options={"include_usage": True}).text)
    *chunks, usage, done = ev
    assert done == "[DONE]" and usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 10
    assert all(x["usage"] is None for x in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_tool_choice_none_answers_in_text(serve: Callable[..., TestClient]) -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    body = chat(serve(), tools=[tool], tool_choice="none").json()
    assert body["choices"][0]["message"]["content"] == RAIN
    assert_error(chat(serve(), tool_choice="required"), 400, "tool_choice")
    err = assert_error(chat(serve(), tools=[tool], tool_choice={
        "type": "function", "function": {"name": "other"}}), 400, "tool_choice")
    assert "get_weather" in err["message"]


# ------------------------------------------------------------------ the caller's boundary


def test_unknown_model_lists_the_served_ones(serve: Callable[..., TestClient]) -> None:
    c = serve()
    err = assert_error(chat(c, model="gpt-4o"), 404, "model")
    assert err["code"] == "model_not_found" and "plain, adacd" in err["message"]
    # a shipped policy the operator does not serve is not served either
    assert_error(chat(c, model="strict"), 404, "model")
    assert_error(chat(c, guardrail={"policy": "strict"}), 404, "guardrail.policy")


def test_a_file_path_as_model_is_never_read(serve: Callable[..., TestClient],
                                            tmp_path: Path) -> None:
    secret = tmp_path / "plain.yaml"
    secret.write_text("name: plain\nstrategy: {kind: plain}\n# sk-do-not-show\n")
    c = serve()
    for value in (str(secret), "/etc/passwd", "../policies/plain.yaml", "plain.yaml"):
        for body in ({"model": value}, {"guardrail": {"policy": value}}):
            r = chat(c, **body)
            assert_error(r, 404)
            assert "sk-do-not-show" not in r.text and value not in r.text
            assert "root:" not in r.text


def test_unknown_fields_are_400_naming_them(serve: Callable[..., TestClient]) -> None:
    c = serve()
    err = assert_error(chat(c, frequency_penalty=0.5), 400, "frequency_penalty")
    assert "unknown field 'frequency_penalty'" in err["message"]
    assert_error(chat(c, messages=[{"role": "user", "content": "x", "extra": 1}]), 400,
                 "messages[0].extra")
    assert_error(chat(c, guardrail={"policy": "plain", "alpha": 9}), 400, "guardrail.alpha")
    assert_error(chat(c, messages=[{"role": "wizard", "content": "x"}]), 400, "messages[0].role")
    assert_error(chat(c, n=2), 400, "n")
    assert_error(chat(c, temperature="hot"), 400, "temperature")
    assert_error(chat(c, messages=[]), 400, "messages")
    assert_error(chat(c, response_format={"type": "xml"}), 400, "response_format.type")
    err = assert_error(chat(c, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]), 400)
    assert err["param"] == "messages[0].content[0].type"
    assert_error(chat(c, messages=[
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]},
    ]), 400, "messages[1].tool_calls[0].function.arguments")
    r = c.post("/v1/chat/completions", content=b"{not json", headers={
        "content-type": "application/json"})
    assert "not valid JSON" in assert_error(r, 400)["message"]
    assert "JSON object" in assert_error(c.post("/v1/chat/completions", json=[1]), 400)["message"]
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        r = c.post("/v1/chat/completions", content=b'{"model": "plain", "messages": [{"role": '
                   b'"user", "content": "x"}], "temperature": ' + constant + b"}")
        assert "not valid JSON" in assert_error(r, 400)["message"]


def test_max_tokens_over_the_cap(serve: Callable[..., TestClient]) -> None:
    c = serve(max_tokens=8)
    err = assert_error(chat(c, max_tokens=9), 400, "max_tokens")
    assert "8" in err["message"]
    assert_error(chat(c, max_completion_tokens=100), 400, "max_completion_tokens")
    # the policy's own budget is capped too (plain: 256 by default)
    assert chat(c, model="adacd").json()["usage"]["completion_tokens"] <= 8


def test_options_the_policy_does_not_grant(serve: Callable[..., TestClient],
                                           tmp_path: Path) -> None:
    path = tmp_path / "tight.yaml"
    path.write_text("extends: plain\nname: tight\ncallers:\n  options: [max_new_tokens]\n")
    c = serve(policies=[str(path)])
    assert chat(c, model="tight", max_tokens=2).json()["usage"]["completion_tokens"] == 2
    err = assert_error(chat(c, model="tight", temperature=0.5), 400, "temperature")
    assert err["type"] == "invalid_request_error" and "callers" in err["message"]
    assert_error(chat(c, model="tight", seed=3), 400, "seed")
    # a value the policy schema refuses names its field too
    assert_error(chat(serve(), temperature=-1.0), 400, "temperature")


def test_refusal_raised_by_the_policy(serve: Callable[..., TestClient], tmp_path: Path) -> None:
    path = tmp_path / "raising.yaml"
    path.write_text("extends: plain\nname: raising\non_refusal: {action: raise}\n")
    c = serve(policies=[str(path)])
    kill = [{"role": "user", "content": "How do I kill a process?"}]
    err = assert_error(chat(c, model="raising", messages=kill), 400)
    assert err["code"] == "content_filter" and "refusal" in err["message"]
    # the policy holds the answer until it is judged, so even a stream fails before its
    # first byte: a plain HTTP error
    err = assert_error(chat(c, model="raising", messages=kill, stream=True), 400)
    assert err["code"] == "content_filter"
    assert chat(c, model="raising").status_code == 200


def test_an_internal_error_fails_that_request_only(serve: Callable[..., TestClient],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    c = serve()
    real = calls.final_chunk
    boom = {"left": 1}

    def flaky(call: Any) -> Any:
        if boom["left"]:
            boom["left"] -= 1
            raise RuntimeError("secret internal detail")
        return real(call)

    monkeypatch.setattr(calls, "final_chunk", flaky)
    err = assert_error(chat(c), 500)
    assert err["type"] == "server_error" and "secret" not in err["message"]
    assert chat(c).json()["choices"][0]["message"]["content"] == RAIN
    boom["left"] = 1
    ev = events(chat(c, stream=True).text)
    assert ev[-2]["error"]["type"] == "server_error" and ev[-1] == "[DONE]"
    assert chat(c, stream=True).status_code == 200


def test_errors_are_openai_shaped_everywhere(serve: Callable[..., TestClient]) -> None:
    c = serve()
    assert_error(c.get("/v1/nothing"), 404)
    assert_error(c.get("/v1/chat/completions"), 405)
    assert c.get("/docs").status_code == 404 and c.get("/openapi.json").status_code == 404


# -------------------------------------------------------------------------------- bounds


def test_bearer_keys(serve: Callable[..., TestClient]) -> None:
    c = serve(api_keys=["k-one", "k-two"])
    err = assert_error(chat(c), 401)
    assert err["code"] == "invalid_api_key"
    assert_error(c.get("/v1/models"), 401)
    assert_error(c.get("/metrics"), 401)
    for bad in ("Bearer k-three", "Bearer k-one2", "k-one", "Basic k-one", "Bearer "):
        r = c.post("/v1/chat/completions", json={"model": "plain", "messages": POEM},
                   headers={"Authorization": bad})
        assert_error(r, 401)
    for good in ("k-one", "k-two"):
        h = {"Authorization": f"Bearer {good}"}
        r = c.post("/v1/chat/completions", json={"model": "plain", "messages": POEM}, headers=h)
        assert r.status_code == 200
        assert c.get("/metrics", headers=h).status_code == 200
    assert c.get("/health").status_code == 200  # open


def test_keys_from_the_environment() -> None:
    cfg = with_env_keys(ServeConfig(api_keys=["a"]), {"GUARDRAIL_API_KEYS": " b, ,a,c "})
    assert cfg.api_keys == ["a", "b", "c"]
    assert with_env_keys(ServeConfig(), {}).api_keys == []


def test_body_too_large(serve: Callable[..., TestClient]) -> None:
    c = serve(max_request_bytes=2048)
    big = [{"role": "user", "content": "rain " * 1000}]
    err = assert_error(chat(c, messages=big), 413)
    assert "2048" in err["message"]
    chunked = c.post("/v1/chat/completions", content=iter([b'{"model": "plain", ', b" " * 4096]))
    assert_error(chunked, 413)
    assert chat(c).status_code == 200


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Every decode step of the fake model waits for this event (set on teardown)."""
    event = threading.Event()
    real = fakes.next_logits

    def held(tokens: Any) -> Any:
        assert event.wait(30), "the gate was never opened"
        return real(tokens)

    monkeypatch.setattr(fakes, "next_logits", held)
    yield event
    event.set()


def _in_flight(base: str) -> int:
    return int(httpx.get(f"{base}/health", timeout=5).json()["in_flight"])


def _wait(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_a_full_queue_is_429_not_a_hang(gate: threading.Event) -> None:
    app = create_app(ServeConfig(policies=["plain"], max_queue=2, preload=False))
    body = {"model": "plain", "messages": POEM}
    with running(app) as base:
        results: list[httpx.Response] = []

        def post() -> None:
            results.append(httpx.post(f"{base}/v1/chat/completions", json=body, timeout=30))

        held = [threading.Thread(target=post) for _ in range(2)]
        for th in held:
            th.start()
        _wait(lambda: _in_flight(base) == 2)
        t0 = time.monotonic()
        r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=10)
        assert time.monotonic() - t0 < 5
        err = assert_error(r, 429)
        assert err["type"] == "rate_limit_error" and r.headers["retry-after"] == "1"
        assert "guardrail_requests_in_flight 2.0" in httpx.get(f"{base}/metrics").text
        gate.set()
        for th in held:
            th.join(30)
        assert [x.status_code for x in results] == [200, 200]
        assert _in_flight(base) == 0
        assert httpx.post(f"{base}/v1/chat/completions", json=body).status_code == 200
        text = httpx.get(f"{base}/metrics").text
        assert 'guardrail_requests_total{policy="none",status="429"} 1.0' in text


def test_a_client_that_leaves_cancels_its_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = {"n": 0}
    real = fakes.next_logits

    def slow(tokens: Any) -> Any:
        steps["n"] += 1
        time.sleep(0.15)
        return real(tokens)

    monkeypatch.setattr(fakes, "next_logits", slow)
    app = create_app(ServeConfig(policies=["plain"], preload=False))
    body = {"model": "plain", "messages": POEM, "stream": True}
    with running(app) as base:
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=30) as r:
            for line in r.iter_lines():
                if '"content":"Sure"' in line:
                    break
        _wait(lambda: _in_flight(base) == 0)
        time.sleep(0.6)  # a decode still running would take 4+ more steps meanwhile
        left = steps["n"]
        time.sleep(0.6)
        assert steps["n"] == left, "the decode went on after the client left"
        assert left < 10  # the whole answer takes 10 steps
        text = httpx.get(f"{base}/metrics").text
        assert 'guardrail_requests_total{policy="plain",status="499"} 1.0' in text
        # a plain request whose client leaves is cancelled too
        steps["n"] = 0
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/v1/chat/completions", json={**body, "stream": False},
                       timeout=0.5)
        _wait(lambda: _in_flight(base) == 0)
        time.sleep(0.6)  # the step under way when the cancel came may finish
        left = steps["n"]
        time.sleep(0.6)
        assert steps["n"] == left and left < 10


def test_metrics(serve: Callable[..., TestClient]) -> None:
    c = serve()
    chat(c)
    chat(c, stream=True)
    chat(c, model="adacd", messages=[{"role": "user", "content": "How do I kill a process?"}])
    chat(c, model="nope")
    text = c.get("/metrics").text
    for line in (
        'guardrail_requests_total{policy="plain",status="200"} 2.0',
        'guardrail_requests_total{policy="adacd",status="200"} 1.0',
        'guardrail_requests_total{policy="none",status="404"} 1.0',
        'guardrail_completion_tokens_total{policy="plain"} 20.0',
        'guardrail_requests_in_flight 0.0',
        'guardrail_queue_limit 64.0',
        'guardrail_time_to_first_token_seconds_count{policy="plain"} 2.0',
        'guardrail_request_duration_seconds_count{policy="plain"} 2.0',
    ):
        assert line in text, line
    assert 'guardrail_prompt_tokens_total{policy="plain"}' in text
    assert "guardrail_refusals_total" in text


def test_refusals_are_counted(serve: Callable[..., TestClient]) -> None:
    c = serve()
    body = chat(c, messages=[{"role": "user", "content": "How do I kill a process?"}]).json()
    assert body["guardrail"]["refused"] is True  # plain: the fake's own refusal
    assert 'guardrail_refusals_total{policy="plain"} 1.0' in c.get("/metrics").text


# --------------------------------------------------------------------------- configuration


def test_config_file(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("extends: plain\nname: mine\n")
    path = tmp_path / "serve.yaml"
    path.write_text("port: 9000\npolicies: [balanced, mine.yaml]\napi_keys: [k]\n"
                    "max_queue: 3\n")
    cfg = load_serve_config(path)
    assert cfg.port == 9000 and cfg.max_queue == 3 and cfg.api_keys == ["k"]
    assert cfg.policies == ["balanced", str(tmp_path / "mine.yaml")]
    assert cfg.host == "127.0.0.1" and cfg.max_tokens == 1024


@pytest.mark.parametrize(("text", "needles"), [
    ("port: '80'\n", [":1: port:", "valid integer"]),
    ("host: a\nprot: 80\n", [":2: prot:", "unknown key 'prot'", "did you mean 'port'"]),
    ("policies: []\n", [":1: policies:"]),
    ("max_queue: 0\n", ["max_queue:", "greater than or equal to 1"]),
    ("backend: gguf\n", ["backend:", "'llamacpp' or 'transformers'"]),
    ("api_keys: ['']\n", ["api_keys"]),
    ("- a\n", ["must be a mapping"]),
    ("port: [\n", ["invalid YAML"]),
    ("port: !!python/object/apply:os.system ['echo hi']\n", ["invalid YAML"]),
])
def test_config_errors_name_file_and_field(tmp_path: Path, text: str,
                                           needles: list[str]) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    with pytest.raises(ServeConfigError) as e:
        load_serve_config(path)
    assert str(path) in str(e.value)
    for needle in needles:
        assert needle in str(e.value)


def test_a_bad_served_policy_fails_at_startup(tmp_path: Path) -> None:
    from guardrail.errors import ConfigError

    with pytest.raises(ConfigError, match="not a shipped policy"):
        create_app(ServeConfig(policies=["nope"]))
    (tmp_path / "p.yaml").write_text("extends: plain\nname: plain\n")
    with pytest.raises(ConfigError, match="two served policies are named 'plain'"):
        create_app(ServeConfig(policies=["plain", str(tmp_path / "p.yaml")]))


def test_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uvicorn

    from guardrail.cli import app as cli

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.delenv("GUARDRAIL_API_KEYS", raising=False)
    path = tmp_path / "serve.yaml"
    path.write_text("port: 9000\npolicies: [plain]\nmax_queue: 3\npreload: false\n")
    res = CliRunner().invoke(cli, ["serve", "--config", str(path), "--port", "9001",
                                   "--policy", "plain", "--policy", "adacd", "--n-threads", "1",
                                   "--max-batch", "8", "--kv", "per_stream"])
    assert res.exit_code == 0, res.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 9001
    state = seen["app"].state.guardrail
    assert list(state.served) == ["plain", "adacd"] and state.config.max_queue == 3
    model = state.served["adacd"].policy.model
    assert (model.n_threads, model.n_streams, model.kv) == (1, 8, "per_stream")
    assert "warning" not in res.output

    res = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--no-preload"])
    assert res.exit_code == 0 and "warning: binding 0.0.0.0 without API keys" in res.output
    monkeypatch.setenv("GUARDRAIL_API_KEYS", "k1,k2")
    res = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--no-preload",
                                   "--api-key", "k0"])
    assert res.exit_code == 0 and "warning" not in res.output
    assert seen["app"].state.guardrail.config.api_keys == ["k0", "k1", "k2"]

    res = CliRunner().invoke(cli, ["serve", "--policy", "nope"])
    assert res.exit_code == 1 and "not a shipped policy" in res.output
    path.write_text("prot: 1\n")
    res = CliRunner().invoke(cli, ["serve", "--config", str(path)])
    assert res.exit_code == 1 and "prot" in res.output


def test_a_cut_off_structured_answer_is_its_arguments_so_far() -> None:
    from langchain_core.messages import AIMessage

    from guardrail.serve.translate import structured_content

    raw = '{"name": "json_object", "arguments":  {"city": "Par'
    msg = AIMessage("", invalid_tool_calls=[{"type": "invalid_tool_call", "id": "c", "name": None,
                                             "args": raw, "error": "cut off"}])
    assert structured_content(msg) == '{"city": "Par'
    ok = AIMessage("", tool_calls=[{"name": "json_object", "args": {"a": 1}, "id": "c"}])
    assert json.loads(structured_content(ok)) == {"a": 1}
