"""The LangChain layer: ``GuardedChatModel`` and, for LangChain v1 agents, ``GuardrailMiddleware``.

Modules: :mod:`~guardrail.langchain.chat_model` (the chat model class),
:mod:`~guardrail.langchain.options` (call options as policy overrides),
:mod:`~guardrail.langchain.calls` (one call from messages to chunks),
:mod:`~guardrail.langchain.batching`, :mod:`~guardrail.langchain.threads`,
:mod:`~guardrail.langchain.middleware` (needs the ``langchain`` package; imported on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guardrail.langchain.chat_model import GuardedChatModel

if TYPE_CHECKING:
    from guardrail.langchain.middleware import GuardrailMiddleware

__all__ = ["GuardedChatModel", "GuardrailMiddleware"]


def __getattr__(name: str) -> Any:
    """Import the middleware lazily: it needs the optional ``langchain`` package."""
    if name == "GuardrailMiddleware":
        try:
            from guardrail.langchain.middleware import GuardrailMiddleware
        except ImportError as e:
            raise ImportError(
                "GuardrailMiddleware needs the langchain package (LangChain v1 agents): "
                "pip install 'guardrail-decoding[agents]'"
            ) from e
        return GuardrailMiddleware
    raise AttributeError(f"module 'guardrail.langchain' has no attribute {name!r}")
