"""Random messages, call options and policy overrides through the chat model on the embedded
model: every outcome is an answer or a guardrail error, never another exception type and never
a process abort (security issue). Short budget: few examples, a handful of tokens each."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage

from guardrail import GuardedChatModel
from guardrail.errors import GuardrailError
from guardrail.policy.callers import trusting

pytest.importorskip("llama_cpp")

CONTROL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "system\n", "<tool_call>", "{\"name\""]
text = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(CONTROL) | st.text(max_size=8), max_size=6).map("".join),
)
message = st.one_of(
    text.map(HumanMessage),
    text.map(SystemMessage),
    text.map(lambda t: AIMessage(t)),
    st.builds(lambda t, r: ChatMessage(role=r, content=t), text,
              st.sampled_from(["human", "User", "tool", "x"])),
    text.map(lambda t: ToolMessage(t, tool_call_id="1")),
)
value = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 50), st.floats(-2, 5), st.just(float("nan")), text,
)
option_names = ["max_new_tokens", "temperature", "top_p", "top_k", "seed", "alpha", "lam",
                "beta", "steps", "safety_prompt", "system_prompt", "policy", "stop", "frobnicate"]
options = st.dictionaries(st.sampled_from(option_names), value, max_size=3)
fields = st.dictionaries(
    st.sampled_from(["policy", "alpha", "steps", "temperature", "seed", "n_ctx", "system_prompt"]),
    st.one_of(st.sampled_from(["plain", "adacd", "strict", "/etc/passwd"]), value), max_size=2,
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(messages=st.lists(message, min_size=1, max_size=3), opts=options, over=fields)
def test_every_outcome_is_an_answer_or_a_guardrail_error(
    messages: list[Any], opts: dict[str, Any], over: dict[str, Any]
) -> None:
    try:
        llm = GuardedChatModel(**{"backend": "llamacpp", "n_threads": 1, "max_new_tokens": 3,
                                  "callers": trusting(["plain", "adacd", "strict"]), **over})
        out = llm.invoke(messages, **opts)
    except GuardrailError:
        return
    assert isinstance(out, AIMessage)
