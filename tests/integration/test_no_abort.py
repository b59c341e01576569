"""No input aborts the process (docs/security.md): sizes passed to ``llama_decode`` fit the
context's batch.

llama.cpp caps a context's ``n_batch`` at the ``n_ctx`` asked for, and a decode call over it
is a ``GGML_ASSERT`` that kills the interpreter. Each case runs in a subprocess, so an abort
fails the test (exit 134) instead of killing pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

TIMEOUT = 600


def run(code: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )
    assert proc.returncode == 0, (
        f"exit {proc.returncode} (134: llama.cpp aborted the process)\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


@pytest.fixture(scope="module", autouse=True)
def _embedded() -> None:
    from guardrail.models import embedded_model_path

    try:
        embedded_model_path()
    except FileNotFoundError as e:  # pragma: no cover - depends on the install
        pytest.skip(str(e))


@pytest.mark.parametrize("n_ctx", [16, 24, 31, 33])
def test_chat_model_with_a_small_context_does_not_abort(n_ctx: int) -> None:
    """The reproduction: the context's batch is n_ctx (16, 24, 31), prefill chunks were 32."""
    out = run(
        """
        import sys
        from guardrail import GuardedChatModel
        from guardrail.errors import GuardrailError

        n = int(sys.argv[1])
        m = GuardedChatModel(policy="plain", n_ctx=n, max_new_tokens=4, backend="llamacpp")
        for text in ("hi", "Tell me a long story about the sea and the sky " * 6):
            try:
                m.invoke(text)
                print("ok")
            except GuardrailError as e:  # a refusal named by guardrail is fine; an abort is not
                print("error", type(e).__name__)
        """,
        str(n_ctx),
    )
    assert out.split("\n")[0] == "ok"  # "hi" fits the (padded) context and is answered


@pytest.mark.parametrize("n_ctx", [16, 24])
def test_hidden_states_and_many_streams_do_not_abort(n_ctx: int) -> None:
    """The probes' all-outputs prefill over a long prompt, and one step of as many live streams
    as the context's batch, with a larger n_batch asked for."""
    out = run(
        """
        import sys, json
        from guardrail.adapters.llamacpp import LlamaCppBackend
        from guardrail.models import embedded_model_path

        n = int(sys.argv[1])
        b = LlamaCppBackend(embedded_model_path(), n_ctx=n, n_seq_max=n, n_batch=64)
        ids = b.tokenize("Tell me a long story about the sea and the sky " * 8)
        states = b.prompt_hidden_states(ids)
        with b.open([ids[:2]] * n) as s:
            first = s.logits()
            s.append([ids[2]] * n)
            after = s.logits()
        with b.open([ids[:3]]) as one:
            alone = one.logits()
        print(json.dumps({"batch": b.n_batch, "states": list(states.shape),
                          "rows": len(after), "same": float(abs(after - alone).max()),
                          "first": float(abs(first - first[0]).max())}))
        """,
        str(n_ctx),
    )
    got = json.loads(out.strip().splitlines()[-1])
    assert got["batch"] <= n_ctx
    assert got["states"][0] > n_ctx and got["rows"] == n_ctx
    assert got["first"] == 0.0 and got["same"] < 1e-3


@pytest.mark.parametrize("kwargs", [{"n_ctx": 16, "n_seq_max": 17}, {"n_ctx": 40, "n_seq_max": 41},
                                    {"n_ctx": 512, "n_seq_max": 257}, {"n_batch": 0}])
def test_sizes_llama_cpp_would_abort_on_are_refused(kwargs: dict[str, int]) -> None:
    """More sequences than n_ctx is a GGML_ASSERT at context creation: a ConfigError first."""
    out = run(
        """
        import sys, json
        from guardrail.adapters.llamacpp import LlamaCppBackend
        from guardrail.errors import ConfigError
        from guardrail.models import embedded_model_path

        try:
            LlamaCppBackend(embedded_model_path(), **json.loads(sys.argv[1]))
        except ConfigError as e:
            print("refused", e)
        """,
        json.dumps(kwargs),
    )
    assert out.startswith("refused") and ("n_seq_max" in out or "n_batch" in out)


def test_lora_sibling_context_does_not_abort(lora_file: Path) -> None:
    out = run(
        """
        import sys
        from guardrail.adapters.llamacpp import LlamaCppBackend
        from guardrail.models import embedded_model_path

        b = LlamaCppBackend(embedded_model_path(), n_ctx=16)
        sib = b.with_lora(sys.argv[1])
        ids = sib.tokenize("Tell me a long story about the sea and the sky " * 4)
        with sib.open([ids]) as s:
            s.append([ids[0]])
        print(sib.n_batch, len(sib.prompt_hidden_states(ids)))
        """,
        str(lora_file),
    )
    batch, rows = map(int, out.split())
    assert batch <= 16 and rows > 16


@pytest.mark.transformers
@pytest.mark.parametrize("backend", ["transformers", "llamacpp"])
def test_exit_right_after_a_generation(backend: str) -> None:
    """The scheduler thread is still alive (idle for IDLE_EXIT_S) when a script ends; a thread
    that ran torch and was still alive at exit aborted the interpreter in most runs on a busy
    machine ("terminate called without an active exception", exit 134). An exit hook stops it:
    checked here by a hook registered before guardrail's (atexit runs them last-in first-out,
    so it runs after), which fails the script if a scheduler thread is still alive."""
    if backend == "transformers":
        pytest.importorskip("torch")
    code = """
        import atexit, os, sys, threading

        def check():
            alive = [t.name for t in threading.enumerate() if t.name == "guardrail-scheduler"]
            if alive:
                sys.stderr.write(f"scheduler threads alive at exit: {alive}\\n")
                os._exit(3)

        atexit.register(check)
        from guardrail.loading import get_engine
        from guardrail.policy import ModelConfig, load_policy
        engine_cfg = ModelConfig(backend=sys.argv[1])
        engine = get_engine(engine_cfg)
        policy = load_policy("plain")
        policy = policy.model_copy(update={"model": engine_cfg, "sampling":
                                           policy.sampling.model_copy(update={"max_new_tokens": 2})})
        g = engine.generate(policy, [{"role": "user", "content": "Hi"}])
        print(len(g.token_ids))
    """
    assert run(code, backend).strip() == "2"
