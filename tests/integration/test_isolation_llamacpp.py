"""The issue's batch reproduction on the embedded model (llama.cpp): one over-long input fails
alone, the others are answered."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage

from guardrail import GuardedChatModel
from guardrail.errors import ContextOverflowError


@pytest.mark.llamacpp
def test_batch_with_an_overlong_input_answers_the_others(llama_engine) -> None:  # type: ignore[no-untyped-def]
    llm = GuardedChatModel(policy="plain", max_new_tokens=8, backend="llamacpp", n_threads=1)
    out = llm.batch(["hi", "hello " * 20000, "bye"], return_exceptions=True)
    assert isinstance(out[1], ContextOverflowError)
    assert "do not fit the context" in str(out[1])
    for msg in (out[0], out[2]):
        assert isinstance(msg, AIMessage) and str(msg.content).strip()
        assert 0 < msg.usage_metadata["output_tokens"] <= 8  # type: ignore[index]
    assert out[0].content == llm.invoke("hi").content  # as if it had been asked alone
    with pytest.raises(ContextOverflowError, match="do not fit the context"):
        llm.invoke("hello " * 20000)
