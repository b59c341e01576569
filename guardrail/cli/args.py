"""Checks of command-line arguments shared by several commands (one-line errors, no traceback)."""

from __future__ import annotations

import typer

BACKENDS = ("llamacpp", "transformers")


def check_backend(backend: str | None, hint: str = "--backend") -> None:
    """A ``--backend`` value must name a backend; ``None`` (the command's default) passes."""
    if backend is not None and backend not in BACKENDS:
        raise typer.BadParameter(f"must be one of {', '.join(BACKENDS)}, got {backend!r}",
                                 param_hint=hint)
