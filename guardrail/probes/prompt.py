"""The probe router: logistic regression on the base model's hidden state of the prompt.

Feature (``FEATURE``): the model's final hidden state (after its last norm) at the prompt's last
token (the conversation rendered with the model's chat template, generation prompt included),
next to the mean of the same states over the tokens of the last user message. The last token
carries what the model is about to do (answer or refuse), the user-message mean what was asked;
together they separate harmful from harmless requests better than either alone and transfer
better to requests unlike the calibration prompts (docs/overrefusal_study.md). Probes saved with
the last token alone (``FEATURE_LAST``) still load and route.
``P(harmful) = σ(wᵀh + b)`` gives the portable router's weights for the whole answer
(``α = P(harmful)``, ``β = 1 − α``) and gated_cd's harmful/harmless decision.

Training: standardised features, L2-regularised logistic regression fitted by Newton's method,
the standardisation folded back into (w, b) so the saved probe reads raw hidden states. numpy
only: a probe works on a llama.cpp-only install.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from guardrail.adapters.base import Backend, HasHiddenStates, Message, require
from guardrail.decoding.experts import FixedWeights
from guardrail.errors import ConfigError
from guardrail.experts.router_file import ProbeWeights

FEATURE_LAST = "last_layer_last_prompt_token"
FEATURE = "last_layer_last_token_and_user_mean"
FEATURES = (FEATURE, FEATURE_LAST)
AUTO = "auto"
log = logging.getLogger("guardrail")


def token_span(backend: Backend, text: str, part: str, n_ids: int) -> tuple[int, int] | None:
    """Token positions ``[start, end)`` of the last occurrence of ``part`` in ``text``, a
    rendered conversation of ``n_ids`` tokens, or ``None`` when it cannot be located."""
    at = text.rfind(part) if part else -1
    if at < 0:
        return None
    start = len(backend.tokenize(text[:at]))
    end = n_ids - len(backend.tokenize(text[at + len(part) :]))
    return (start, end) if 0 <= start < end <= n_ids else None


def user_span(
    backend: Backend, messages: Sequence[Message], text: str, n_ids: int
) -> tuple[int, int]:
    """Token positions ``[start, end)`` of the last user message's text in ``text``, the
    rendered prompt of ``n_ids`` tokens (the whole prompt when the text cannot be located)."""
    users = [m for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
    content = str(users[-1]["content"]) if users else ""
    return token_span(backend, text, content, n_ids) or (0, n_ids)


def conversation_feature(
    backend: Backend, messages: Sequence[Message], feature: str = FEATURE
) -> NDArray[np.float32]:
    """One conversation's probe feature (``[d]`` or ``[2d]``, see the module docstring)."""
    if feature not in FEATURES:
        raise ConfigError(f"probe feature must be one of {', '.join(FEATURES)}, got {feature!r}")
    model = require(backend, HasHiddenStates, "a prompt probe")
    text = backend.render(messages)
    ids = backend.tokenize(text)
    states = model.prompt_hidden_states(ids)
    if feature == FEATURE_LAST:
        return states[-1]
    start, end = user_span(backend, messages, text, len(ids))
    return np.concatenate([states[-1], states[start:end].mean(axis=0)]).astype(np.float32)


def prompt_features(
    backend: Backend, conversations: Sequence[Sequence[Message]], *, feature: str = FEATURE,
    progress: bool = False,
) -> NDArray[np.float32]:
    """``[n, width]`` probe features of each conversation, from any backend that exposes hidden
    states (transformers and llama.cpp do)."""
    from tqdm.auto import tqdm

    convs = tqdm(conversations, desc="prompt features", unit="prompt", disable=not progress)
    return np.stack([conversation_feature(backend, c, feature) for c in convs])


def _sigmoid(x: NDArray[np.floating]) -> NDArray[np.float64]:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def probe_harm(probe: ProbeWeights, features: NDArray[np.floating]) -> NDArray[np.float64]:
    """``P(harmful) = σ(wᵀh + b)`` for features ``[n, d]``."""
    x = np.asarray(features, dtype=np.float64)
    if x.shape[-1] != probe.hidden:
        raise ConfigError(
            f"probe expects hidden states of width {probe.hidden}, the model gives "
            f"{x.shape[-1]} (probe trained on another model?)"
        )
    return _sigmoid(x @ probe.weight.astype(np.float64) + probe.bias)


_PROBES: dict[tuple[str, float], ProbeWeights] = {}


def load_probe(path: str | Path) -> ProbeWeights:
    """A probe router file, cached while the file is unchanged."""
    from guardrail.experts.errors import RouterFileError
    from guardrail.experts.router_file import load_router

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


def calibration_prompts() -> tuple[list[str], list[bool]]:
    """The prompts an ``auto`` probe is trained on (430): the shipped XSTest prompts whose row
    index is not a multiple of 3 (300 of 450; rows 0, 3, 6, ... are left for evaluation), the
    JailbreakBench harmful behaviours with an even index (50; the odd ones are left for
    evaluation) and the Vicuna-Bench questions (80 harmless). XSTest alone is short questions;
    the probe it gives misses most harmful instructions ("Write a ...")."""
    rows = [r for i, r in enumerate(_shipped_rows("xstest_prompts.csv")) if i % 3 != 0]
    rows += _shipped_rows("calibration_extra.csv")
    return [r["prompt"] for r in rows], [r["label"] == "unsafe" for r in rows]


def cache_dir() -> Path:
    """Where ``auto`` probes are kept: ``$GUARDRAIL_CACHE`` or ``~/.cache/guardrail``."""
    return Path(os.environ.get("GUARDRAIL_CACHE") or "~/.cache/guardrail").expanduser() / "probes"


def auto_probe_path(backend: Backend, *, l2: float = 0.1) -> Path:
    """This model's ``auto`` probe: trained once on :func:`calibration_prompts`, then cached."""
    prompts, harmful = calibration_prompts()
    digest = hashlib.sha256(repr((prompts, harmful, l2, FEATURE)).encode()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", backend.model_name)
    path = cache_dir() / f"{stem}-v{backend.vocab_size}-{digest}.safetensors"
    if not path.is_file():
        from guardrail.experts.router_file import save_router

        log.warning("training the auto probe for %s on %d calibration prompts (once; cached in %s)",
                    backend.model_name, len(prompts), path)
        probe, _ = train_probe(backend, prompts, harmful, heldout=0.0, l2=l2)
        tmp = save_router(probe, path.with_suffix(".tmp"), calibration="xstest rows i % 3 != 0, "
                          "jailbreakbench even rows, vicuna bench")
        tmp.replace(path)
    return path


def _conversation_harm(probe: ProbeWeights, backend: Backend, messages: Sequence[Message]) -> float:
    feature = probe.metadata.get("feature") or FEATURE_LAST  # files from before features were named
    return float(probe_harm(probe, conversation_feature(backend, messages, feature)[None])[0])


def prompt_harm(path: str | Path, backend: Backend, messages: Sequence[Message]) -> float:
    """P(harmful) of one conversation under the probe in ``path`` (``auto``: this model's
    calibrated probe, see :func:`auto_probe_path`)."""
    if str(path) == AUTO:
        path = auto_probe_path(backend)
    return _conversation_harm(load_probe(path), backend, messages)


def probe_weights(probe: ProbeWeights, backend: Backend, messages: Sequence[Message]) -> FixedWeights:
    """The portable router for one conversation: ``(α, β) = (P(harmful), 1 − P(harmful))``."""
    p = _conversation_harm(probe, backend, messages)
    return FixedWeights(p, 1.0 - p, name="probe")


def fit_logistic(x: NDArray[np.floating], y: NDArray[np.floating], *, l2: float = 1e-2,
                 iters: int = 50) -> tuple[NDArray[np.float32], float]:
    """L2-regularised logistic regression on ``x [n, d]``, ``y [n]`` in {0, 1}; raw-space (w, b).

    Minimises mean binary cross-entropy + ``l2 · |w|²`` (bias unpenalised) on standardised
    features with Newton's method."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    mu, sd = x.mean(0), np.maximum(x.std(0, ddof=1) if len(x) > 1 else x.std(0), 1e-6)
    z = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    n, d1 = z.shape
    reg = np.full(d1, 2.0 * l2)
    reg[-1] = 1e-9  # bias: no penalty (a tiny ridge keeps the Hessian invertible)
    theta = np.zeros(d1)
    for _ in range(iters):
        p = _sigmoid(z @ theta)
        grad = z.T @ (p - y) / n + reg * theta
        hess = (z.T * (p * (1 - p))) @ z / n + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    w_raw = theta[:-1] / sd
    return w_raw.astype(np.float32), float(theta[-1] - (w_raw * mu).sum())


@dataclass
class ProbeReport:
    """What :func:`train_probe` measured."""

    n_train: int
    n_heldout: int
    train_accuracy: float
    heldout_accuracy: float | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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
