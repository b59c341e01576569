"""Every example in examples/ runs on the embedded model (short generations)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from langchain_core.messages import AIMessage, ToolMessage

pytest.importorskip("llama_cpp")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FAST = {"n_threads": 1, "backend": "llamacpp"}


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_lcel_chain(capsys: pytest.CaptureFixture[str]) -> None:
    answer = _load("lcel_chain").main(max_new_tokens=8, **FAST)
    assert isinstance(answer, str) and answer and answer in capsys.readouterr().out


def test_streaming(capsys: pytest.CaptureFixture[str]) -> None:
    full = _load("streaming").main(max_new_tokens=8, **FAST)
    out = capsys.readouterr().out
    assert full.content and str(full.content) in out and "modes:" in out
    assert len(full.response_metadata["guardrail"]["modes"]) == 8


def test_async_batch(capsys: pytest.CaptureFixture[str]) -> None:
    answers = _load("async_batch").main(max_new_tokens=6, **FAST)
    assert len(answers) == 3 and all(isinstance(a, AIMessage) and a.content for a in answers)
    assert "heartbeat ticks" in capsys.readouterr().out


def test_policy_switch() -> None:
    results = _load("policy_switch").main(max_new_tokens=6, **FAST)
    policies = {k: v.response_metadata["guardrail"]["policy"] for k, v in results.items()}
    assert policies == {"adacd": "adacd", "plain": "plain", "adacd alpha=1": "adacd"}
    assert results["plain"].response_metadata["guardrail"]["modes"] == []


def test_agent(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("langchain.agents")
    out = _load("agent").main(max_new_tokens=16, **FAST)
    msgs = out["messages"]
    assert any(isinstance(m, ToolMessage) and "Paris" in str(m.content) for m in msgs)
    assert "step 1: policy=adacd" in capsys.readouterr().out


def test_every_example_is_a_script_and_tested() -> None:
    """Each example has a __main__ guard and a test above (demo.py belongs to the CLI)."""
    tested = {"lcel_chain", "streaming", "async_batch", "policy_switch", "agent",
              "refusal_detectors"}
    found = {p.stem for p in EXAMPLES.glob("*.py")} - {"demo"}
    assert found == tested
    for name in found:
        src = (EXAMPLES / f"{name}.py").read_text(encoding="utf-8")
        assert 'if __name__ == "__main__":' in src, name


def test_refusal_detectors(capsys: pytest.CaptureFixture[str]) -> None:
    verdicts = _load("refusal_detectors").main()
    # an answer, a stock refusal both catch, a refusal in other words only the probe catches
    assert verdicts == [(False, False), (True, True), (False, True)]
    assert "P(refusal)=" in capsys.readouterr().out
