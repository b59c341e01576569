"""MidPO's in-layer router, trained on top of two frozen LoRA experts (docs/methods.md §2.5).

Inside every MLP the experts' deltas are mixed by per-token gates read from the down
projection's input h (eq. F of :mod:`guardrail.experts.faithful`, computed by its
:func:`~guardrail.experts.faithful.mix_delta`):

    out = W h + s · (α(h) · B_s A_s h + β(h) · B_h A_h h),   α = σ(w_α·h + b_α), β = σ(w_β·h + b_β)

Sizing. MidPO's scorer is three linears with no activation between them (d_ff → 512 → d_ff →
1), which is one affine map followed by a sigmoid; a 7B model's router is then 723M
parameters computing what 2·L·(d_ff + 1) parameters compute. This router *is* that folded form
(the ``folded`` router file): per layer one weight vector and one bias per expert, 92k
parameters on a 135M model (30 layers, d_ff 1536). Weights start at 0 and biases at 0
(α = β = 0.5 everywhere), so the first step is the two experts' plain average.

Loss: eq. R of :mod:`guardrail.training.losses` — DPO against the frozen base model (no
experts), plus ``prior_weight · (mean|α| + mean|β − 1|)`` averaged over the real (non-padding)
positions of every layer. MidPO averages over padding too (an artefact of how a batch is
padded), and applies PEFT's scaling at inference but not in training (§2.8.1): here ``s`` is
the adapters' own ``lora_alpha / r`` in training and at inference (the generated policy leaves
``scale`` unset), so the router is used as it was trained. Only the router is trained.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from guardrail.errors import ConfigError
from guardrail.training.losses import dpo_loss, router_prior
from guardrail.training.pairs import PreferencePair


@dataclass(frozen=True)
class RouterSettings:
    """Router training settings (MidPO's β and prior weight; lr and steps sized for CPUs)."""

    beta: float = 0.1
    prior_weight: float = 1.0
    learning_rate: float = 1e-3
    epochs: float = 1.0
    max_steps: int = -1
    max_length: int = 512
    seed: int = 42
    threads: int | None = None

    def check(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"--router-beta must be positive, got {self.beta}")
        if self.prior_weight < 0:
            raise ConfigError(f"--prior-weight must be >= 0, got {self.prior_weight}")
        if self.learning_rate <= 0:
            raise ConfigError(f"--router-lr must be positive, got {self.learning_rate}")
        if self.max_steps < 1 and self.epochs <= 0:
            raise ConfigError("give --router-epochs > 0 or --router-steps >= 1")


def encode_pair(tok: Any, pair: PreferencePair, max_length: int) -> list[tuple[list[int], int]]:
    """``[(ids, answer_start)]`` of the chosen and the rejected conversation: the prompt under
    the model's chat template with the generation prompt, then the answer and end of turn."""
    prompt = tok.apply_chat_template([{"role": "user", "content": pair.prompt}],
                                     add_generation_prompt=True, tokenize=True)
    if isinstance(prompt, dict) or hasattr(prompt, "input_ids"):
        prompt = prompt["input_ids"]
    prompt = list(prompt)
    out = []
    for text in (pair.chosen, pair.rejected):
        answer = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = (prompt + answer)[:max_length]
        out.append((ids, min(len(prompt), len(ids) - 1)))
    return out


class _Gates:
    """Forward hooks that mix the experts into every ``down_proj`` with trainable gates."""

    def __init__(self, model: Any, safety: Any, helpfulness: Any):
        import torch

        from guardrail.experts.faithful import find_down_projs

        self.downs = find_down_projs(model)
        n, d = max(self.downs) + 1, self.downs[0].in_features
        self.w = torch.nn.Parameter(torch.zeros(n, 2, d))
        self.b = torch.nn.Parameter(torch.zeros(n, 2))
        self.experts = (safety, helpfulness)
        self.mask: Any = None
        self.gates: list[Any] = []
        self._handles: list[Any] = []

    def attach(self) -> None:
        import torch

        from guardrail.experts.faithful import lora_pair, mix_delta

        s, h_ = self.experts
        for i, mod in sorted(self.downs.items()):
            (A_s, B_s), (A_h, B_h) = lora_pair(s, i, mod), lora_pair(h_, i, mod)

            def hook(module: Any, args: tuple[Any, ...], out: Any, i: int = i, A_s: Any = A_s,
                     B_s: Any = B_s, A_h: Any = A_h, B_h: Any = B_h) -> Any:
                h = args[0]
                g = torch.sigmoid(h @ self.w[i].T + self.b[i])       # [batch, seq, 2]
                self.gates.append(g)
                return mix_delta(out, h, A_s, B_s, A_h, B_h, g[..., :1], g[..., 1:],
                                 s.scaling, h_.scaling)

            self._handles.append(mod.register_forward_hook(hook))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def prior(self) -> Any:
        """Eq. R's prior over the real positions of every layer of the last forward."""
        import torch

        g = torch.stack(self.gates)                                  # [L, batch, seq, 2]
        m = self.mask.bool()
        sel = g[:, m]                                                # [L, positions, 2]
        return router_prior(sel[..., 0], sel[..., 1])


def _batch(rows: list[tuple[list[int], int]], pad: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    answer = torch.zeros((len(rows), width), dtype=torch.bool)
    for k, (seq, start) in enumerate(rows):
        ids[k, :len(seq)] = torch.tensor(seq)
        mask[k, :len(seq)] = 1
        answer[k, start:len(seq)] = True
    return ids, mask, answer


def _answer_logps(model: Any, ids: Any, mask: Any, answer: Any) -> Any:
    """Summed log-probability of each row's answer tokens."""
    import torch

    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    return (logp * answer[:, 1:]).sum(-1)


def train_router(
    base: Path, safety_dir: Path, helpfulness_dir: Path, pairs: Sequence[PreferencePair],
    out_file: Path, *, settings: RouterSettings, progress: bool = True,
) -> Path:
    """Train the folded in-layer router on ``pairs`` and write it (router file kind
    ``folded``) with a ``.json`` card beside it."""
    settings.check()
    if not pairs:
        raise ConfigError("router: no preference pairs to train on")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from guardrail.experts.lora import load_lora_expert
    from guardrail.experts.router_file import save_router
    from guardrail.experts.routers import FoldedGates

    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(str(base))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gates = _Gates(model, load_lora_expert(safety_dir, "safety"),
                   load_lora_expert(helpfulness_dir, "helpfulness"))
    batches = [_batch(encode_pair(tok, p, settings.max_length), pad) for p in pairs]
    with torch.no_grad():  # π_ref: the frozen base model, no experts
        refs = [_answer_logps(model, *b) for b in tqdm(batches, desc="router reference",
                                                       disable=not progress)]
    steps = settings.max_steps if settings.max_steps >= 1 else max(
        1, round(settings.epochs * len(batches)))
    opt = torch.optim.Adam([gates.w, gates.b], lr=settings.learning_rate)
    order = torch.Generator().manual_seed(settings.seed)
    log: list[dict[str, float]] = []
    gates.attach()
    t0 = time.perf_counter()
    try:
        perm: list[int] = []
        for step in tqdm(range(steps), desc="router", disable=not progress):
            if not perm:
                perm = torch.randperm(len(batches), generator=order).tolist()
            k = perm.pop()
            ids, mask, answer = batches[k]
            gates.gates, gates.mask = [], mask
            pol = _answer_logps(model, ids, mask, answer)
            ref = refs[k]
            pref = dpo_loss(pol[0], pol[1], ref[0], ref[1], beta=settings.beta)
            prior = gates.prior()
            loss = pref + settings.prior_weight * prior
            opt.zero_grad()
            loss.backward()
            opt.step()
            log.append({"step": step + 1, "loss": loss.item(), "dpo": pref.item(),
                        "prior": prior.item()})
    finally:
        gates.detach()
    seconds = time.perf_counter() - t0
    router = FoldedGates(gates.w.detach().clone(), gates.b.detach().clone())
    path = save_router(router, out_file, model=str(base.name), hidden=str(router.hidden))
    card = {"router": path.name, "kind": "folded", "pairs": len(pairs), "steps": steps,
            "seconds": round(seconds, 1), "settings": asdict(settings),
            "safety": str(safety_dir), "helpfulness": str(helpfulness_dir), "log": log}
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return path
