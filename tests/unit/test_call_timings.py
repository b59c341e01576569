"""What a guarded call costs, by part, in ``response_metadata["guardrail"]["timings"]``, and
the model name LangSmith is given before a model is loaded (no model: the fake backend; the
embedded model's case is in tests/integration/test_chat_model.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import guardrail.langchain.calls as calls
import guardrail.loading as loading
import guardrail.strategies.gated_cd as gated_cd
from guardrail import GuardedChatModel
from guardrail.engine import Engine
from guardrail.policy.model import ModelConfig

SCHEDULER = {"queue_s", "prefill_s", "first_token_s", "decode_s", "total_s"}


@pytest.fixture(autouse=True)
def on_fake(fake_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    monkeypatch.setattr(calls, "get_engine", lambda cfg: fake_engine)
    return fake_engine


def _timings(llm: GuardedChatModel, prompt: str) -> dict[str, float]:
    return llm.invoke(prompt).response_metadata["guardrail"]["timings"]


def test_a_decoded_call_reports_scheduler_planning_and_guard_parts() -> None:
    t = _timings(GuardedChatModel(policy="plain", max_new_tokens=4), "Write a poem about rain.")
    assert SCHEDULER | {"plan_s", "rules_s", "review_s", "guard_s"} <= set(t)
    assert "probe_s" not in t  # plain reads no probe
    assert all(v >= 0 for v in t.values())
    assert t["guard_s"] == pytest.approx(t["rules_s"] + t["review_s"], abs=2e-4)
    assert t["total_s"] >= t["decode_s"]


def test_probe_time_is_reported_and_counted_in_the_guard(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def slow_probe(probe: object, backend: object, messages: object) -> float:
        time.sleep(0.05)
        return 0.1

    monkeypatch.setattr(gated_cd, "resolve_probe", lambda path, backend: object())
    monkeypatch.setattr(gated_cd, "conversation_harm", slow_probe)
    policy = tmp_path / "gated.yaml"
    policy.write_text(
        "name: gated\nstrategy: {kind: gated_cd, steps: 2, probe: {path: auto, threshold: 0.3}}\n"
        "sampling: {max_new_tokens: 3}\n"
    )
    msg = GuardedChatModel(policy=str(policy)).invoke("Write a poem about rain.")
    t = msg.response_metadata["guardrail"]["timings"]
    assert msg.response_metadata["guardrail"]["probe"] == {"harm": 0.1}
    assert t["probe_s"] >= 0.05
    assert t["plan_s"] >= t["probe_s"]  # the probe is read while planning
    assert t["guard_s"] == pytest.approx(t["rules_s"] + t["probe_s"] + t["review_s"], abs=2e-4)


def test_a_rule_answer_costs_only_the_guard(tmp_path: Path) -> None:
    policy = tmp_path / "rules.yaml"
    policy.write_text(
        "name: rules\n"
        "rules: [{name: no-weapons, pattern: bioweapon, action: replace, message: No.}]\n"
    )
    msg = GuardedChatModel(policy=str(policy)).invoke("How do I make a bioweapon?")
    meta = msg.response_metadata["guardrail"]
    assert meta["matched_rule"] == "no-weapons"
    assert set(meta["timings"]) == {"rules_s", "review_s", "guard_s"}  # nothing was decoded


def test_model_name_without_loading_then_from_the_loaded_backend(
    fake_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "tiny-model"
    folder.mkdir()
    adapter = tmp_path / "safety-lora"
    adapter.mkdir()
    cfg = ModelConfig(path=str(folder), backend="transformers", lora=str(adapter))
    assert loading.model_name(cfg) == "tiny-model+safety-lora"  # as the backend will say
    monkeypatch.setitem(loading._cache, loading._cache_key(cfg), fake_engine)
    assert loading.model_name(cfg) == fake_engine.backend.model_name  # the loaded one's
    missing = ModelConfig(path=str(tmp_path / "gone.gguf"))
    assert loading.model_name(missing) == "gone.gguf"  # the call itself reports it missing

