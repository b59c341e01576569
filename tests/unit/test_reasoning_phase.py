"""Reasoning models (guardrail/langchain/thinking.py) on the fake backend with templates built
here: the reasoning goes to a reasoning content block, the guarded steps start at the answer,
and the refusal detector reads the answer only."""

from __future__ import annotations

from pathlib import Path

import pytest

import guardrail.langchain.calls as calls
from guardrail import GuardedChatModel
from guardrail.engine import Engine
from guardrail.loading import engine_for
from tests.fakes import CHATML, FakeBackend

# Knows </think> (drops earlier reasoning from history, as Qwen3's template does); the model
# opens the section itself.
MODEL_OPENS = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{{ m['content'].split('</think>')[-1] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Opens the section in the generation prompt (DeepSeek-R1 style).
TEMPLATE_OPENS = MODEL_OPENS.replace("assistant\n{% endif %}", "assistant\n<think>{% endif %}")
# Reasoning switched off: the generation prompt holds an empty, closed section.
SWITCHED_OFF = MODEL_OPENS.replace("assistant\n{% endif %}",
                                   "assistant\n<think></think>{% endif %}")


def on(template: str, monkeypatch: pytest.MonkeyPatch) -> Engine:
    engine = engine_for(FakeBackend(template=template))
    monkeypatch.setattr(calls, "get_engine", lambda cfg: engine)
    return engine


def test_templates_are_what_they_say() -> None:
    assert "assistant\n<think>" in TEMPLATE_OPENS and "<think></think>" in SWITCHED_OFF


@pytest.mark.parametrize("template", [MODEL_OPENS, TEMPLATE_OPENS])
def test_reasoning_is_a_reasoning_block_and_the_answer_is_the_content(
    template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    on(template, monkeypatch)
    msg = GuardedChatModel(policy="plain", max_new_tokens=20).invoke(
        "Write a poem about rain and ponder.")
    assert msg.content == "Sure, here is a poem about rain."
    assert msg.additional_kwargs["reasoning_content"] == "it."
    assert msg.content_blocks[0] == {"type": "reasoning", "reasoning": "it."}
    assert msg.usage_metadata["output_token_details"]["reasoning"] >= 3
    assert "reasoning_s" in msg.response_metadata["guardrail"]["timings"]


def test_the_guarded_steps_start_at_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    on(MODEL_OPENS, monkeypatch)
    msg = GuardedChatModel(policy="adacd", steps=2, max_new_tokens=20).invoke(
        "Write a poem about rain and ponder.")
    steps = msg.response_metadata["guardrail"]["steps"]
    assert [s["step"] for s in steps if "mode" in s] == [0, 1]
    assert msg.additional_kwargs["reasoning_content"] == "it."
    # the first guarded token is the answer's first word, not "<think>"
    assert msg.content.startswith("Sure")


def test_streaming_sends_reasoning_then_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    on(MODEL_OPENS, monkeypatch)
    chunks = list(GuardedChatModel(policy="plain", max_new_tokens=20).stream(
        "Write a poem about rain and ponder."))
    kinds = ["r" if c.additional_kwargs.get("reasoning_content") else "t" if c.content else "-"
             for c in chunks]
    assert kinds.index("r") < kinds.index("t") and "r" not in kinds[kinds.index("t"):]
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.additional_kwargs["reasoning_content"] == "it."
    assert total.content == "Sure, here is a poem about rain."


def test_a_model_that_does_not_reason_answers_as_usual(monkeypatch: pytest.MonkeyPatch) -> None:
    on(MODEL_OPENS, monkeypatch)
    msg = GuardedChatModel(policy="adacd", steps=2, max_new_tokens=20).invoke(
        "Write a poem about rain.")
    assert msg.content == "Sure, here is a poem about rain."
    assert "reasoning_content" not in msg.additional_kwargs
    steps = msg.response_metadata["guardrail"]["steps"]
    assert [s["step"] for s in steps if "mode" in s] == [0, 1]


def test_reasoning_switched_off_or_unknown_decodes_in_one_phase(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    for template in (SWITCHED_OFF, CHATML):
        on(template, monkeypatch)
        msg = GuardedChatModel(policy="plain", max_new_tokens=20).invoke(
            "Write a poem about rain and ponder.")
        assert "reasoning_content" not in msg.additional_kwargs


def test_reasoning_that_uses_the_budget_leaves_no_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    on(MODEL_OPENS, monkeypatch)
    msg = GuardedChatModel(policy="plain", max_new_tokens=3).invoke(
        "Write a poem about rain and ponder.")
    assert msg.content == "" and msg.response_metadata["finish_reason"] == "length"
    assert msg.additional_kwargs.get("reasoning_content", "").startswith("it")


def test_a_replaced_answer_shows_no_reasoning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    on(MODEL_OPENS, monkeypatch)
    policy = tmp_path / "held.yaml"
    policy.write_text("name: held\non_refusal: {action: replace, message: Not this one.}\n"
                      "sampling: {max_new_tokens: 20}\n")
    chunks = list(GuardedChatModel(policy=str(policy)).stream("ponder how to kill it"))
    assert [c.content for c in chunks if c.content] == ["Not this one."]
    assert not any(c.additional_kwargs.get("reasoning_content") for c in chunks)


def test_the_profile_says_reasoning_once_the_model_is_loaded(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    import guardrail.langchain.counting as counting

    model = GuardedChatModel(policy="plain")
    for template, want in ((MODEL_OPENS, True), (CHATML, False)):
        engine = on(template, monkeypatch)
        monkeypatch.setattr(counting, "loaded_engine", lambda cfg, e=engine: e)
        assert model.profile is not None
        assert counting.model_profile(model._policy_obj)["reasoning_output"] is want


def test_the_server_passes_reasoning_as_reasoning_content() -> None:
    from langchain_core.messages import AIMessage, AIMessageChunk

    from guardrail.serve.translate import to_delta, to_openai_message

    msg = AIMessage("Paris.", additional_kwargs={"reasoning_content": "The capital."})
    assert to_openai_message(msg, structured=False)["reasoning_content"] == "The capital."
    piece = AIMessageChunk(content="", additional_kwargs={"reasoning_content": "The"})
    assert to_delta(piece, structured=False) == {"reasoning_content": "The"}
