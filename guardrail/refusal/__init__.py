"""Refusal detection, pluggable: a keyword rule (``string_match``), a local judge model asked
XSTest's question (``judge``) or a learned refusal judge reading the answer (``probe``).

``get_detector(config, engine)`` turns a policy's ``refusal`` section (or just a detector name)
into a callable ``(prompt, response) -> RefusalResult``; every result names the detector that
decided. Agreement with human labels is measured by :mod:`guardrail.refusal.agreement`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from guardrail.errors import ConfigError
from guardrail.loading import get_engine
from guardrail.policy.model import ModelConfig
from guardrail.refusal.base import LABELS, Detector, RefusalResult
from guardrail.refusal.judge import JudgeDetector
from guardrail.refusal.probe import SHIPPED, RefusalProbeDetector, load_refusal_probe
from guardrail.refusal.string_match import XSTEST_PREFIXES, StringMatchDetector, string_match

DETECTORS = ("string_match", "judge", "probe")


def get_detector(config: Any = None, engine: Any = None) -> Detector:
    """The detector ``config`` asks for.

    ``config`` is ``None`` (string match with XSTest's list), a detector name
    (``"string_match"``, ``"judge"`` or ``"probe"``), or a policy's refusal section: an object
    with ``detector``, ``prefixes``, ``judge`` (``judge.model``: a model config or ``None``,
    ``judge.max_new_tokens``) and ``probe`` (``path``, ``model``, ``threshold``). A judge without
    its own model uses ``engine``, the guarded model; a probe reads the model it was trained on
    (``probe.model``, default the embedded one), never ``engine``.
    """
    if config is None:
        return StringMatchDetector()
    name = config if isinstance(config, str) else getattr(config, "detector", None)
    if name == "string_match":
        return StringMatchDetector(None if isinstance(config, str) else config.prefixes)
    if name == "judge":

        judge = None if isinstance(config, str) else getattr(config, "judge", None)
        model = getattr(judge, "model", None)
        max_new = getattr(judge, "max_new_tokens", None) or 16
        if model is not None:

            engine = get_engine(model)
        if engine is None:
            raise ConfigError(
                "refusal.detector 'judge' needs a model: set refusal.judge.model or pass the "
                "engine of the guarded model"
            )
        return JudgeDetector(engine, max_new_tokens=max_new)
    if name == "probe":
        return _probe_detector(None if isinstance(config, str) else getattr(config, "probe", None))
    raise ConfigError(f"refusal.detector must be one of {', '.join(DETECTORS)}, got {name!r}")


def _probe_detector(settings: Any) -> Detector:
    """A :class:`~guardrail.refusal.probe.RefusalProbeDetector` for a ``probe`` section."""

    path = getattr(settings, "path", None) or SHIPPED
    probe = load_refusal_probe(path)
    engine = get_engine(getattr(settings, "model", None) or ModelConfig())
    name = SHIPPED if path == SHIPPED else Path(path).name
    if probe.model and probe.model != engine.backend.model_name:
        logging.getLogger("guardrail").warning(
            "refusal probe %s was trained on %s but reads %s; its decisions are only as good as "
            "its agreement there (guardrail eval agreement)", name, probe.model,
            engine.backend.model_name,
        )
    return RefusalProbeDetector(engine.backend, probe, name=name, run=engine.run,
                                threshold=getattr(settings, "threshold", None))


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
