"""LangChain's own middleware next to GuardrailMiddleware in `create_agent`, on the embedded model:
SummarizationMiddleware (needs the profile and the model's token counts) and
ModelFallbackMiddleware (catches a guarded model's ContextOverflowError as a model error)."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain.agents")
pytest.importorskip("llama_cpp")

from langchain.agents import create_agent  # noqa: E402
from langchain.agents.middleware import (  # noqa: E402
    ModelFallbackMiddleware,
    SummarizationMiddleware,
)
from langchain_core import exceptions as lc  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402

from guardrail import GuardedChatModel, GuardrailMiddleware  # noqa: E402

pytestmark = pytest.mark.llamacpp

LONG_HISTORY = [
    HumanMessage("Tell me about the history of tea in China. " * 6),
    AIMessage("Tea was first drunk in China thousands of years ago. " * 6),
    HumanMessage("And in Japan? " * 6),
    AIMessage("Tea came to Japan with Buddhist monks. " * 6),
    HumanMessage("Say hello."),
]


def test_summarization_with_fractional_trigger_uses_the_models_counts() -> None:
    guarded = GuardedChatModel(policy="plain", n_ctx=1024, max_new_tokens=12, n_threads=1)
    counted: list[int] = []

    def count(messages: list) -> int:  # type: ignore[type-arg]
        n = guarded.get_num_tokens_from_messages(messages)
        counted.append(n)
        return n

    summarise = SummarizationMiddleware(model=guarded, trigger=("fraction", 0.1),
                                        keep=("messages", 1), token_counter=count)
    agent = create_agent(model=guarded, tools=[],
                         middleware=[summarise, GuardrailMiddleware(policy="plain",
                                                                    max_new_tokens=12)])
    out = agent.invoke({"messages": list(LONG_HISTORY)})
    assert counted and max(counted) > 0.1 * 1024  # over the trigger: it summarised
    kept = out["messages"]
    assert len(kept) < len(LONG_HISTORY) + 1  # the old turns were replaced by a summary
    assert isinstance(kept[-1], AIMessage) and kept[-1].content.strip()


def test_fallback_middleware_catches_a_context_overflow() -> None:
    tiny = GuardedChatModel(policy="plain", n_ctx=128, max_new_tokens=8, n_threads=1)
    roomy = GuardedChatModel(policy="plain", n_ctx=2048, max_new_tokens=8, n_threads=1)
    with pytest.raises(lc.ContextOverflowError):  # what the fallback catches, by its type
        tiny.invoke(LONG_HISTORY)
    agent = create_agent(model=tiny, tools=[], middleware=[ModelFallbackMiddleware(roomy)])
    out = agent.invoke({"messages": list(LONG_HISTORY)})
    answer = out["messages"][-1]
    assert isinstance(answer, AIMessage) and answer.content.strip()
    assert answer.response_metadata["guardrail"]["policy"] == "plain"
