"""LangChain's standard chat-model suites (``langchain-tests``) against GuardedChatModel.

Runs on the embedded model with the llama.cpp backend. Capability flags are set to what the
model really does; ``n_threads=1`` keeps llama.cpp fast on a shared, busy CPU.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from guardrail import GuardedChatModel

pytest.importorskip("llama_cpp")

_PARAMS: dict[str, Any] = {"policy": "adacd", "backend": "llamacpp", "n_threads": 1}


class _Flags:
    """Shared configuration of both suites."""

    @property
    def chat_model_class(self) -> type[GuardedChatModel]:
        return GuardedChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return dict(_PARAMS)

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # A local model has no network client: no timeout or retries to configure. 48 tokens
        # keep the suite short yet fit a forced tool call's JSON (20-40 tokens here).
        return {"temperature": 0, "max_tokens": 48, "stop": []}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True  # response_format json_object / json_schema, decoded under a JSON grammar

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False  # one GuardedChatModel decodes one model; construct another to switch

    @property
    def enable_vcr_tests(self) -> bool:
        return False  # nothing goes over the network to record

    @property
    def tool_choice_value(self) -> str | None:
        return "any"


class TestGuardedChatModelUnit(_Flags, ChatModelUnitTests):
    """Construction, serialisation, tool binding and LangSmith params (no generation)."""

    @pytest.mark.xfail(
        strict=True,
        reason="langchain-core's loader only revives classes in its own allowlist "
        "(langchain_core.load.mapping) even with allowed_objects='all', so no third-party "
        "chat model can pass this round trip; the serialised form matches the snapshot and "
        "test_chat_model.py::test_serialisation_round_trip revives it with "
        "allowed_objects=[GuardedChatModel]",
    )
    def test_serdes(self, model: Any, snapshot: Any) -> None:
        super().test_serdes(model, snapshot)


@pytest.mark.slow
class TestGuardedChatModelIntegration(_Flags, ChatModelIntegrationTests):
    """Real generations on the embedded model through every standard code path."""

    @pytest.mark.xfail(
        strict=True,
        raises=AssertionError,
        reason="model capability: with tool_choice left to the model ('auto'), the embedded "
        "135M model answers in prose instead of calling the tool; forced calls "
        "(test_tool_calling, test_tool_choice, structured output) pass, and the agent "
        "plumbing is tested end to end in tests/integration/test_middleware.py",
    )
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: Any) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(
        strict=True,
        raises=AssertionError,
        reason="model capability: the embedded 135M English model copies the Chinese name "
        "'你好啊集团' into the forced call, but for the Japanese 'こんにちは株式会社' it writes "
        "other katakana ('トラックバック・トラ…') into customer_name and the call's JSON ends "
        "unterminated, so no tool call is parsed; copying CJK text through a forced call is "
        "tested in test_chat_model.py::test_forced_call_with_unicode_arguments",
    )
    def test_unicode_tool_call_integration(
        self,
        model: Any,
        *,
        tool_choice: str | None = None,
        force_tool_call: bool = True,
    ) -> None:
        super().test_unicode_tool_call_integration(
            model, tool_choice=tool_choice, force_tool_call=force_tool_call
        )
