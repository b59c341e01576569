"""``guardrail serve --ray`` on the session's local Ray cluster, embedded model (llama.cpp): a
Ray Serve application of 2 replicas of the guarded server answers the ``openai`` SDK and
``ChatOpenAI``, streaming included, with the same greedy answers as the single-process server;
its health checks call each replica's ``/health``; and the command itself deploys, serves and,
on SIGINT, deletes its application."""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
pytest.importorskip("langchain_openai")
pytest.importorskip("ray")

import httpx
import yaml
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from langchain_openai import ChatOpenAI
from servers import free_port, running

from guardrail.scale.config import RayServeSettings
from guardrail.scale.serve import check_health, deploy, undeploy
from guardrail.serve import ServeConfig, create_app

pytestmark = pytest.mark.llamacpp

KEY = "test-key"
CAP = 16
POLICIES = ["plain", "balanced"]
QUESTIONS = ["What is the capital of France?", "How do I kill a Python process?",
             "Name three colours."]
START_TIMEOUT = 300.0


def _config(port: int, ray: RayServeSettings | None = None) -> ServeConfig:
    return ServeConfig(policies=POLICIES, backend="llamacpp", max_tokens=CAP, api_keys=[KEY],
                       port=port, ray=ray)


@pytest.fixture(scope="module")
def serve_port(ray_cluster: str) -> Iterator[int]:
    """The port of the cluster's Ray Serve ingress; Serve is shut down after the module."""
    from ray import serve

    port = free_port()
    yield port
    serve.shutdown()


@pytest.fixture(scope="module")
def ray_url(serve_port: int) -> Iterator[str]:
    """Two replicas of the server, half a CPU each, behind Ray Serve's ingress."""
    config = _config(serve_port, RayServeSettings(replicas=2, num_cpus=0.5, name="test"))
    url = deploy(config)
    try:
        yield url
    finally:
        undeploy(config)


@pytest.fixture(scope="module")
def local_url() -> Iterator[str]:
    """The same server in this process (uvicorn), for reference answers."""
    with running(create_app(_config(0)), start_timeout=START_TIMEOUT) as base:
        yield f"{base}/v1"


def _client(url: str) -> Any:
    return openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=120)


def _answer(url: str, model: str, question: str) -> str:
    r = _client(url).chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=CAP,
        temperature=0)
    return str(r.choices[0].message.content)


def _streamed(url: str, model: str, question: str) -> str:
    stream = _client(url).chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=CAP,
        temperature=0, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_two_replicas_run_and_pass_health_checks(ray_url: str) -> None:
    from ray import serve

    app = serve.status().applications["test"]
    assert app.status == "RUNNING"
    (deployment,) = app.deployments.values()
    assert deployment.status == "HEALTHY" and dict(deployment.replica_states) == {"RUNNING": 2}
    health = httpx.get(ray_url.removesuffix("/v1") + "/health", timeout=30).json()
    assert health["status"] == "ok" and health["loaded"] is True
    models = _client(ray_url).models.list()
    assert [m.id for m in models] == POLICIES
    with pytest.raises(openai.AuthenticationError):  # the app's own key check, through Serve
        openai.OpenAI(base_url=ray_url, api_key="wrong", max_retries=0).models.list()


async def test_health_check_fails_when_health_route_does() -> None:
    sick = FastAPI()

    @sick.get("/health")
    async def _health() -> JSONResponse:
        return JSONResponse({"status": "error"}, status_code=503)

    with pytest.raises(RuntimeError, match="503"):
        await check_health(sick)
    await check_health(create_app(_config(0).model_copy(update={"preload": False})))


def test_openai_greedy_answers_equal_single_process(ray_url: str, local_url: str) -> None:
    cases = [(m, q) for m in POLICIES for q in QUESTIONS]
    expected = [_answer(local_url, m, q) for m, q in cases]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # concurrent: both replicas work
        answers = list(pool.map(lambda c: _answer(ray_url, *c), cases))
        streamed = list(pool.map(lambda c: _streamed(ray_url, *c), cases))
    assert all(expected)
    assert answers == expected
    assert streamed == expected


def test_chat_openai_invoke_and_stream_equal_single_process(ray_url: str, local_url: str
                                                            ) -> None:
    def chat(url: str, model: str) -> ChatOpenAI:
        return ChatOpenAI(base_url=url, api_key=KEY, model=model, max_retries=0,  # type: ignore[arg-type]
                          timeout=120, max_tokens=CAP, temperature=0)

    for model in POLICIES:
        want = chat(local_url, model).invoke(QUESTIONS[0]).content
        assert want
        assert chat(ray_url, model).invoke(QUESTIONS[0]).content == want
        chunks = list(chat(ray_url, model).stream(QUESTIONS[0]))
        assert len(chunks) > 1 and "".join(str(c.content) for c in chunks) == want


def test_serve_command_deploys_then_deletes_on_sigint(ray_cluster: str, serve_port: int,
                                                      local_url: str, tmp_path: Path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "policies": ["plain"], "backend": "llamacpp", "max_tokens": CAP, "port": serve_port,
        "api_keys": [KEY],
        "ray": {"address": ray_cluster, "num_cpus": 0.5, "name": "cli",
                "route_prefix": "/cli"}}), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "guardrail.cli", "serve", "--ray",
                             "--replicas", "1", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    health = f"http://127.0.0.1:{serve_port}/cli/health"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "guardrail serve --ray did not come up"
            try:
                if httpx.get(health, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        url = f"http://127.0.0.1:{serve_port}/cli/v1"
        assert _answer(url, "plain", QUESTIONS[0]) == _answer(local_url, "plain", QUESTIONS[0])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 0, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    from ray import serve

    assert "cli" not in serve.status().applications
    assert httpx.get(health, timeout=30).status_code == 404
