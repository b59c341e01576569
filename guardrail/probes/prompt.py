"""The prompt probe: P(harmful) of a request from the model's own reading of it.

``P(harmful) = σ(wᵀh + b)`` on the probe feature (:mod:`guardrail.probes.features`) gives
gated_cd's harmful/harmless decision and the portable experts router's weights for the whole
answer (``α = P(harmful)``, ``β = 1 − α``). ``auto`` trains one per model on first use from the
shipped calibration prompts and caches it; ``guardrail router train`` trains one from labels.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import random
import re
import threading
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from guardrail.adapters.base import Backend, Message
from guardrail.decoding.experts import FixedWeights
from guardrail.errors import ConfigError, RouterFileError
from guardrail.experts.router_file import load_router, save_router
from guardrail.probes.features import FEATURE, FEATURE_LAST, conversation_feature, prompt_features
from guardrail.probes.logistic import ProbeReport, fit_logistic, probe_harm
from guardrail.probes.weights import ProbeWeights

AUTO = "auto"
log = logging.getLogger("guardrail")


_PROBES: dict[tuple[str, float], ProbeWeights] = {}


def load_probe(path: str | Path) -> ProbeWeights:
    """A probe router file, cached while the file is unchanged."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise RouterFileError(f"probe: no such router file: {str(p)!r}")
    key = (str(p.resolve()), p.stat().st_mtime)
    if key not in _PROBES:
        probe = load_router(p)
        if getattr(probe, "metadata", {}).get("purpose") == "refusal":
            raise RouterFileError(
                f"{str(p)!r} is a refusal probe (`refusal: {{detector: probe}}`), not a prompt "
                "router; train one with `guardrail router train`"
            )
        if not isinstance(probe, ProbeWeights):
            raise RouterFileError(
                f"router file {str(p)!r} is a per-layer {probe.kind} router (faithful mode); a "
                "prompt probe is needed here (`guardrail router train`)"
            )
        _PROBES[key] = probe
    return _PROBES[key]


def _shipped_rows(name: str) -> list[dict[str, str]]:
    raw = resources.files("guardrail.data").joinpath(name).read_text("utf-8")
    return list(csv.DictReader(io.StringIO(raw)))


def calibration_rows() -> list[dict[str, str]]:
    """The calibration prompts (430) as rows with ``id``, ``prompt``, ``label`` (safe/unsafe)
    and ``type``: the shipped XSTest prompts whose row index is not a multiple of 3 (300 of
    450; rows 0, 3, 6, ... are left for evaluation; ids ``xstest-N``), the JailbreakBench
    harmful behaviours with an even index (50; the odd ones are left for evaluation) and the
    Vicuna-Bench questions (80 harmless). Nothing that scores a method is among them."""
    rows = [{"id": f"xstest-{r['id']}", "prompt": r["prompt"], "label": r["label"],
             "type": r.get("type", "")}
            for i, r in enumerate(_shipped_rows("xstest_prompts.csv")) if i % 3 != 0]
    rows += [{"id": r["id"], "prompt": r["prompt"], "label": r["label"],
              "type": r.get("source", "")} for r in _shipped_rows("calibration_extra.csv")]
    return rows


def calibration_prompts() -> tuple[list[str], list[bool]]:
    """The prompts an ``auto`` probe is trained on (:func:`calibration_rows`). XSTest alone is
    short questions; the probe it gives misses most harmful instructions ("Write a ...")."""
    rows = calibration_rows()
    return [r["prompt"] for r in rows], [r["label"] == "unsafe" for r in rows]


def cache_dir() -> Path:
    """Where ``auto`` probes are kept: ``$GUARDRAIL_CACHE`` or ``~/.cache/guardrail``."""
    return Path(os.environ.get("GUARDRAIL_CACHE") or "~/.cache/guardrail").expanduser() / "probes"


def auto_probe_file(backend: Backend, *, l2: float = 0.1) -> Path:
    """Where this model's ``auto`` probe is cached (named by the model, its vocabulary and a
    digest of the calibration data and settings); it may not exist yet."""
    prompts, harmful = calibration_prompts()
    digest = hashlib.sha256(repr((prompts, harmful, l2, FEATURE)).encode()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", backend.model_name)
    return cache_dir() / f"{stem}-v{backend.vocab_size}-{digest}.safetensors"


def auto_probe_path(backend: Backend, *, l2: float = 0.1, force: bool = False) -> Path:
    """This model's ``auto`` probe: trained once on :func:`calibration_prompts`, then cached
    (``force``: trained again). The first request of a policy with ``probe: auto`` on a model
    waits for this unless ``guardrail calibrate`` ran first (docs/experts.md says the cost)."""
    path = auto_probe_file(backend, l2=l2)
    if force or not path.is_file():
        prompts, harmful = calibration_prompts()
        log.warning("calibrating the auto probe for %s: %d prompt reads, once per model (cached "
                    "in %s; `guardrail calibrate` does this ahead of the first request)",
                    backend.model_name, len(prompts), path)
        t0 = time.perf_counter()
        probe, _ = train_probe(backend, prompts, harmful, heldout=0.0, l2=l2)
        # a name of its own: two processes calibrating the same model at once (a server's
        # first request and `guardrail calibrate`, Ray workers) each replace the file whole
        part = path.with_name(f"{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp")
        tmp = save_router(probe, part, calibration="xstest rows i % 3 != 0, "
                          "jailbreakbench even rows, vicuna bench")
        tmp.replace(path)
        log.warning("calibrated the auto probe for %s in %.0f s", backend.model_name,
                    time.perf_counter() - t0)
    return path


def probe_feature(probe: ProbeWeights) -> str:
    """The feature ``probe`` reads (files from before features were named read the last token)."""
    return probe.metadata.get("feature") or FEATURE_LAST


def conversation_harm(probe: ProbeWeights, backend: Backend,
                      messages: Sequence[Message]) -> float:
    """P(harmful) of one conversation under ``probe``."""
    x = conversation_feature(backend, messages, probe_feature(probe))
    return float(probe_harm(probe, x[None])[0])


def resolve_probe(path: str | Path, backend: Backend) -> ProbeWeights:
    """The probe in ``path`` (``auto``: this model's calibrated probe, trained on first use:
    :func:`auto_probe_path`; run it where the model runs)."""
    return load_probe(auto_probe_path(backend) if str(path) == AUTO else path)


def prompt_harm(path: str | Path, backend: Backend, messages: Sequence[Message]) -> float:
    """P(harmful) of one conversation under the probe in ``path`` (``auto``: this model's
    calibrated probe, see :func:`auto_probe_path`)."""
    return conversation_harm(resolve_probe(path, backend), backend, messages)


def probe_weights(probe: ProbeWeights, backend: Backend, messages: Sequence[Message]) -> FixedWeights:
    """The portable router for one conversation: ``(α, β) = (P(harmful), 1 − P(harmful))``."""
    p = conversation_harm(probe, backend, messages)
    return FixedWeights(p, 1.0 - p, name="probe")


def train_probe(
    backend: Backend,
    prompts: Sequence[str],
    harmful: Sequence[bool],
    *,
    heldout: float = 0.25,
    seed: int = 0,
    l2: float = 1e-2,
    feature: str = FEATURE,
) -> tuple[ProbeWeights, ProbeReport]:
    """Fit the probe on user prompts labelled harmful (→ safety expert) or harmless.

    A stratified ``heldout`` fraction (seeded) is kept out of training for the accuracy report.
    """
    if len(prompts) != len(harmful):
        raise ConfigError(f"train_probe: {len(prompts)} prompts but {len(harmful)} labels")
    if not 0 <= heldout < 1:
        raise ConfigError(f"heldout must be in [0, 1), got {heldout}")
    labels = np.array([bool(h) for h in harmful])
    if len(set(labels.tolist())) < 2:
        raise ConfigError("train_probe: need both harmful and harmless prompts")
    rng = random.Random(seed)
    test: list[int] = []
    for cls in (True, False):
        idx = [i for i, lab in enumerate(labels) if lab == cls]
        rng.shuffle(idx)
        test += idx[: int(round(len(idx) * heldout))]
    train = [i for i in range(len(labels)) if i not in set(test)]
    x = prompt_features(backend, [[{"role": "user", "content": p}] for p in prompts],
                        feature=feature, progress=len(prompts) > 20)
    w, b = fit_logistic(x[train], labels[train], l2=l2)
    probe = ProbeWeights(w, b, {"feature": feature, "model": backend.model_name})

    def acc(ix: list[int]) -> float:
        return float(np.mean((probe_harm(probe, x[ix]) >= 0.5) == labels[ix]))

    report = ProbeReport(len(train), len(test), acc(train), acc(test) if test else None)
    return probe, report
