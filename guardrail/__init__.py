"""guardrail: a decode-time safety layer for local LLMs.

``GuardedChatModel`` is the LangChain chat model; ``GuardrailMiddleware`` guards the model calls
of a LangChain v1 agent (it needs the ``langchain`` package, so it is imported on first use);
``load_policy`` reads a shipped policy or a YAML file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guardrail.policy import load_policy

__version__ = "0.1.0"

if TYPE_CHECKING:
    from guardrail.langchain import GuardedChatModel, GuardrailMiddleware

__all__ = ["GuardedChatModel", "GuardrailMiddleware", "__version__", "load_policy"]


def __getattr__(name: str) -> Any:
    """Import the LangChain-facing classes lazily (the core works without them)."""
    if name in ("GuardedChatModel", "GuardrailMiddleware"):
        import guardrail.langchain  # langchain-core is a dependency; langchain is optional

        return getattr(guardrail.langchain, name)
    raise AttributeError(f"module 'guardrail' has no attribute {name!r}")
