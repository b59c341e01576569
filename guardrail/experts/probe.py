"""The probe router: logistic regression on the base model's hidden state of the prompt.

Feature: the last layer's hidden state at the prompt's last token (the conversation rendered
with the model's chat template, generation prompt included). ``P(harmful) = σ(wᵀh + b)`` gives
the portable router's weights for the whole answer: ``α = P(harmful)``, ``β = 1 − α``.

Training: standardised features, L2-regularised logistic regression fitted with L-BFGS, the
standardisation folded back into (w, b) so the saved probe reads raw hidden states.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from guardrail.adapters.base import Backend, Message
from guardrail.decoding.experts import FixedWeights
from guardrail.errors import ConfigError
from guardrail.experts.router_file import ProbeWeights

FEATURE = "last_layer_last_prompt_token"


def prompt_features(backend: Backend, conversations: Sequence[Sequence[Message]]) -> torch.Tensor:
    """``[n, d]`` hidden states (last layer, last prompt token) of each conversation."""
    model = getattr(backend, "model", None)
    if backend.name != "transformers" or model is None:
        raise NotImplementedError(
            f"the probe router needs the model's hidden states, which only the transformers "
            f"backend exposes here; backend {backend.name!r} is not supported yet"
        )
    dev = next(model.parameters()).device
    rows = []
    with torch.inference_mode():
        for conv in conversations:
            ids = torch.tensor([backend.encode_chat(conv)], device=dev)
            out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
            rows.append(out.hidden_states[-1][0, -1].float().cpu())
    return torch.stack(rows)


def probe_harm(probe: ProbeWeights, features: torch.Tensor) -> torch.Tensor:
    """``P(harmful) = σ(wᵀh + b)`` for features ``[n, d]``."""
    if features.shape[-1] != probe.hidden:
        raise ConfigError(
            f"probe expects hidden states of width {probe.hidden}, the model gives "
            f"{features.shape[-1]} (probe trained on another model?)"
        )
    return torch.sigmoid(features.float() @ probe.weight.float() + probe.bias.float())


def probe_weights(probe: ProbeWeights, backend: Backend, messages: Sequence[Message]) -> FixedWeights:
    """The portable router for one conversation: ``(α, β) = (P(harmful), 1 − P(harmful))``."""
    p = float(probe_harm(probe, prompt_features(backend, [messages]))[0])
    return FixedWeights(p, 1.0 - p, name="probe")


def fit_logistic(x: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-2,
                 iters: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised logistic regression on ``x [n, d]``, ``y [n]`` in {0, 1}; raw-space (w, b)."""
    x, y = x.double(), y.double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y)
        loss = loss + l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = (w / sd).detach()
    return w_raw.float(), (b - (w_raw * mu).sum()).detach().float()


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
) -> tuple[ProbeWeights, ProbeReport]:
    """Fit the probe on user prompts labelled harmful (→ safety expert) or harmless.

    A stratified ``heldout`` fraction (seeded) is kept out of training for the accuracy report.
    """
    if len(prompts) != len(harmful):
        raise ConfigError(f"train_probe: {len(prompts)} prompts but {len(harmful)} labels")
    if not 0 <= heldout < 1:
        raise ConfigError(f"heldout must be in [0, 1), got {heldout}")
    labels = [bool(h) for h in harmful]
    if len(set(labels)) < 2:
        raise ConfigError("train_probe: need both harmful and harmless prompts")
    rng = random.Random(seed)
    test: list[int] = []
    for cls in (True, False):
        idx = [i for i, lab in enumerate(labels) if lab == cls]
        rng.shuffle(idx)
        test += idx[: int(round(len(idx) * heldout))]
    train = [i for i in range(len(labels)) if i not in set(test)]
    x = prompt_features(backend, [[{"role": "user", "content": p}] for p in prompts])
    y = torch.tensor(labels, dtype=torch.float32)
    w, b = fit_logistic(x[train], y[train], l2=l2)
    probe = ProbeWeights(w, b, {"feature": FEATURE, "model": backend.model_name})

    def acc(ix: list[int]) -> float:
        pred = probe_harm(probe, x[ix]) >= 0.5
        return float((pred == y[ix].bool()).float().mean())

    report = ProbeReport(len(train), len(test), acc(train), acc(test) if test else None)
    return probe, report


