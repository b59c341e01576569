"""Exceptions raised by guardrail. Every message names the file, field or argument at fault."""

from __future__ import annotations


class GuardrailError(Exception):
    """Base class of every error raised on purpose by guardrail."""


class ConfigError(GuardrailError, ValueError):
    """A bad argument or parameter value (names the argument and what is allowed)."""


class PolicyError(ConfigError):
    """A policy file or policy value failed to load or validate."""


class BackendError(GuardrailError, RuntimeError):
    """A model backend failed to load or to run."""


class ModelNotFoundError(BackendError, FileNotFoundError):
    """The model file or directory does not exist."""


class ContextOverflowError(ConfigError):
    """A prompt (plus the tokens to generate) does not fit in the model's context."""


class RouterFileError(ConfigError):
    """A router or probe file is missing, unreadable, or does not follow the documented key
    layout."""


class RefusalError(GuardrailError):
    """Raised when a policy says ``on_refusal: raise`` and the answer was a refusal."""
