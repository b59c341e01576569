"""Refusal detection, pluggable: a keyword rule (``string_match``) or a local judge model.

``get_detector(config, engine)`` turns a policy's ``refusal`` section (or just a detector name)
into a callable ``(prompt, response) -> RefusalResult``; every result names the detector that
decided. Agreement with human labels is measured by :mod:`guardrail.refusal.agreement`.
"""

from __future__ import annotations

from typing import Any

from guardrail.errors import ConfigError
from guardrail.refusal.base import LABELS, Detector, RefusalResult
from guardrail.refusal.string_match import XSTEST_PREFIXES, StringMatchDetector, string_match

DETECTORS = ("string_match", "judge")


def get_detector(config: Any = None, engine: Any = None) -> Detector:
    """The detector ``config`` asks for.

    ``config`` is ``None`` (string match with XSTest's list), a detector name
    (``"string_match"`` or ``"judge"``), or a policy's refusal section: an object with
    ``detector``, ``prefixes`` and ``judge`` (``judge.model``: a model config or ``None``,
    ``judge.max_new_tokens``). A judge without its own model uses ``engine``, the guarded model.
    """
    if config is None:
        return StringMatchDetector()
    name = config if isinstance(config, str) else getattr(config, "detector", None)
    if name == "string_match":
        return StringMatchDetector(None if isinstance(config, str) else config.prefixes)
    if name == "judge":
        from guardrail.refusal.judge import JudgeDetector

        judge = None if isinstance(config, str) else getattr(config, "judge", None)
        model = getattr(judge, "model", None)
        max_new = getattr(judge, "max_new_tokens", None) or 16
        if model is not None:
            from guardrail.engine import get_engine

            engine = get_engine(model)
        if engine is None:
            raise ConfigError(
                "refusal.detector 'judge' needs a model: set refusal.judge.model or pass the "
                "engine of the guarded model"
            )
        return JudgeDetector(engine, max_new_tokens=max_new)
    raise ConfigError(f"refusal.detector must be one of {', '.join(DETECTORS)}, got {name!r}")


def __getattr__(name: str) -> Any:
    if name == "JudgeDetector":  # lazy: the judge imports the engine and its backends
        from guardrail.refusal.judge import JudgeDetector

        return JudgeDetector
    raise AttributeError(f"module 'guardrail.refusal' has no attribute {name!r}")


__all__ = [
    "DETECTORS",
    "LABELS",
    "XSTEST_PREFIXES",
    "Detector",
    "JudgeDetector",
    "RefusalResult",
    "StringMatchDetector",
    "get_detector",
    "string_match",
]
