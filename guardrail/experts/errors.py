"""Errors of the expert mix. Each names the file or argument at fault."""

from __future__ import annotations

from guardrail.errors import ConfigError, ModelNotFoundError, RouterFileError


class AdapterError(ConfigError):
    """A LoRA adapter cannot serve as an expert (wrong target modules, shapes, options)."""


class AdapterNotFoundError(ModelNotFoundError):
    """A LoRA adapter directory or its files do not exist."""


class TokenizerMismatchError(ConfigError):
    """Two experts would read or write tokens differently, so their streams cannot be mixed."""


__all__ = ["AdapterError", "AdapterNotFoundError", "RouterFileError", "TokenizerMismatchError"]
