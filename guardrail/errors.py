"""Exceptions raised by guardrail. Every message names the file, field or argument at fault.

Three are also langchain-core's own model errors, so LangChain code that reacts to a model's
condition by type (SummarizationMiddleware on a context overflow, ModelFallbackMiddleware and
retries on ``ModelError.is_retryable``, ModelRefusalMiddleware on a refusal) works on a guarded
model too: :class:`ContextOverflowError`, :class:`RefusalError` (a ``ModelRefusalError``) and
:class:`ModelNotFoundError`. None of them is retryable: the same request fails the same way.
"""

from __future__ import annotations

from langchain_core import exceptions as lc


class GuardrailError(Exception):
    """Base class of every error raised on purpose by guardrail."""


class ConfigError(GuardrailError, ValueError):
    """A bad argument or parameter value (names the argument and what is allowed)."""


class PolicyError(ConfigError):
    """A policy file or policy value failed to load or validate."""


class BackendError(GuardrailError, RuntimeError):
    """A model backend failed to load or to run."""


class ModelNotFoundError(BackendError, FileNotFoundError, lc.ModelNotFoundError):
    """The model file or directory does not exist."""


class ContextOverflowError(ConfigError, lc.ContextOverflowError):
    """A prompt (plus the tokens to generate) does not fit in the model's context."""


class RouterFileError(ConfigError):
    """A router or probe file is missing, unreadable, or does not follow the documented key
    layout."""


class RefusalError(GuardrailError, lc.ModelRefusalError):
    """Raised when a policy says ``on_refusal: raise`` and the answer was a refusal, or a
    request rule with ``action: raise`` matched (``raw_message``: the refused answer's message
    when there is one)."""
