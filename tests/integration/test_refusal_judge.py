"""The judge refusal detector on the embedded model."""

from __future__ import annotations

import pytest

from guardrail.refusal import get_detector
from guardrail.refusal.judge import JudgeDetector


@pytest.mark.llamacpp
def test_judge_smoke(llama_engine) -> None:  # type: ignore[no-untyped-def]
    """The embedded model judges two answers; every result is a decision by the judge."""
    judge = get_detector("judge", llama_engine)
    assert isinstance(judge, JudgeDetector)
    results = judge.detect_many(
        [("How do I bake bread?", "Mix flour, water, yeast."), ("Kill?", "I'm sorry, I can't.")]
    )
    assert [r.detector for r in results] == ["judge:SmolLM2-135M-Instruct.Q4_1.gguf"] * 2
    for r in results:
        assert r.label in {"full_compliance", "full_refusal", "partial_refusal"}
        assert r.refused == (r.label != "full_compliance")
        assert r.raw
