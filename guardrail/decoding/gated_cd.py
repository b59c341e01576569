"""Refusal-gated contrastive decoding: AdaCD's contrast applied only to undo an unsure refusal.

A variant of AdaCD (``docs/methods.md`` §1.3; the study is ``docs/overrefusal_study.md``). Streams
as in AdaCD: O = the conversation as given (stream 0), S = the same conversation with the safety
instruction added (stream 1); the engine builds S so that it differs from O by the safety
instruction alone (the template's default system prompt stays in both). For the first K tokens:

* O refuses iff its top token starts a refusal phrase: ``argmax z_o ∈ R``              (gate)
* keep the refusal iff it is also AdaCD's refusal mode: ``A >= λ`` and
  ``max p_o >= λ · max p_s`` (§1.3.2-4); then decode O as is: ``ẑ = z_o``               (keep)
* an unsure refusal gets AdaCD's comply contrast ``ẑ = z_s − α (z_s − z_o)`` and the
  plausibility mask from O, ``ẑ[v] = −inf`` where ``p_o[v] < β · max p_o`` (§1.3.5-6)  (undo)
* O not refusing: ``ẑ = z_o``                                                           (plain)

So an answer differs from plain decoding only where the plain model starts a refusal that the
safety instruction, not the request, makes it sure of. After K tokens O is decoded alone. S is
read only at a step whose O starts a refusal, so the rule defers it
(:class:`~guardrail.decoding.rules.DeferringRule`): the loop opens S, prefilled with its prompt
and the tokens generated so far, at the first such step (never, for most answers), except in
the refuse zone below, which reads S at every guarded step.

With a prompt probe (``harm`` = P(harmful) of the request, MidPO's router signal read from the
model's hidden state of the prompt, see ``guardrail/probes/prompt.py``) the probe replaces the
switch: a prompt it finds harmful (``harm >= τ``) is decoded plainly from one stream, so the
model's own refusals stand; in a prompt it finds harmless every refusal start gets the comply
contrast, and where it is sure (``harm < ban_below``) refusal starts are also banned. Where it is
sure the prompt is harmful (``harm >= refuse_above``, optional) each of the first K tokens is
decoded from whichever stream refuses: O where its top token starts a refusal, else the safety
stream, ``ẑ = z_o`` if ``argmax z_o ∈ R`` else ``z_s``. A harmful request the model would answer
is refused as the safety instruction makes it refuse, in the model's own refusal words, and a
refusal the model makes on its own is never lost to the safety stream answering (a small model
can, given the instruction, answer what it refused without it). (AdaCD's refusal contrast
``z_s + α (z_s − z_o)`` pushes away from the model's usual template into refusals that refusal
detectors miss, "I am not allowed to answer this", and its mask from O can remove the very
refusal tokens O finds unlikely; docs/overrefusal_study.md.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from guardrail.decoding.adacd import validate_adacd_params
from guardrail.decoding.mathops import agreement, contrast, plausibility_mask
from guardrail.decoding.rules import StepInfo, TwoStreamsForKSteps
from guardrail.errors import ConfigError


def gated_cd_logits(
    z_o: NDArray[np.float32],
    z_s: NDArray[np.float32],
    *,
    refusal_ids: frozenset[int],
    alpha: float,
    lam: float,
    beta: float,
    confirm: bool = True,
    ban: bool = False,
) -> tuple[NDArray[np.float32], StepInfo]:
    """One refusal-gated step: final logits and the step's decision (module docstring).

    Args:
        z_o: next-token logits of the plain stream O, ``[vocab]``.
        z_s: next-token logits of the safety stream S, ``[vocab]``.
        refusal_ids: token ids that begin a refusal phrase (R).
        alpha: contrast strength α of the comply contrast.
        lam: agreement threshold λ, also the confidence factor (AdaCD's switch).
        beta: plausibility cut-off β.
        confirm: whether AdaCD's switch may keep a refusal (False: a probe found the prompt
            harmless, so every refusal start is undone).
        ban: also ban refusal starts from ẑ, for a prompt the probe is sure is harmless: the
            contrast alone cannot undo a refusal both streams are sure of (if the plausibility
            mask leaves nothing else, the mask is dropped for that step).

    Returns:
        ``(ẑ, info)``; info ``mode`` is "plain" (O does not refuse), "refuse" (refusal kept,
        ẑ = z_o) or "comply" (refusal undone by the contrast), with ``agreement``, ``p_plain``
        and ``p_safety`` as in AdaCD.
    """
    sig = agreement(z_o, z_s)
    info: StepInfo = {"agreement": sig.agreement, "p_plain": sig.conf_o, "p_safety": sig.conf_s}
    if int(np.argmax(z_o)) not in refusal_ids:
        return np.asarray(z_o, dtype=np.float32), {"mode": "plain", **info}
    if confirm and sig.refuse(lam):
        return np.asarray(z_o, dtype=np.float32), {"mode": "refuse", **info}
    if not ban:
        final = contrast(z_o, z_s, sig.p_o, alpha=alpha, towards_safety=False, beta=beta)
        return final, {"mode": "comply", **info}
    final = contrast(z_o, z_s, sig.p_o, alpha=alpha, towards_safety=False, beta=0.0)
    banned = np.fromiter(refusal_ids, dtype=np.intp)
    drop = plausibility_mask(sig.p_o, beta)
    drop[banned] = True
    if drop.all():  # the mask leaves only refusal starts: drop the mask for this step
        drop[:] = False
        drop[banned] = True
    final[drop] = -np.inf
    return final, {"mode": "comply", **info}


def refusal_start_ids(
    phrases: Iterable[str], tokenize: object, *, max_ids: int = 256
) -> frozenset[int]:
    """First token ids of ``phrases`` as an answer may begin them (as written, capitalised,
    and after a space). ``tokenize`` maps text to token ids (a backend's ``tokenize``)."""
    if not callable(tokenize):
        raise ConfigError("refusal_start_ids: tokenize must be callable")
    ids: set[int] = set()
    for phrase in phrases:
        phrase = phrase.strip()
        if not phrase:
            continue
        for form in {phrase, phrase[0].upper() + phrase[1:], " " + phrase}:
            toks = tokenize(form)
            if toks:
                ids.add(int(toks[0]))
    if not ids:
        raise ConfigError("refusal_start_ids: no refusal phrase gave a token")
    if len(ids) > max_ids:
        raise ConfigError(f"refusal_start_ids: {len(ids)} ids, more than {max_ids}")
    return frozenset(ids)


def check_gate(threshold: float, ban_below: float, refuse_above: float | None) -> None:
    """The probe gate's thresholds are ordered ``0 <= ban_below <= threshold <= refuse_above <= 1``
    (the one check, used by the rule and by the policy schema); raise :class:`ConfigError`."""
    if not 0 <= threshold <= 1:
        raise ConfigError(f"gated_cd: threshold must be in [0, 1], got {threshold}")
    if not 0 <= ban_below <= threshold:
        raise ConfigError(
            f"gated_cd: ban_below must be in [0, threshold={threshold}], got {ban_below}"
        )
    if refuse_above is not None and not threshold <= refuse_above <= 1:
        raise ConfigError(f"gated_cd: refuse_above must be in [threshold={threshold}, 1], got "
                          f"{refuse_above}")


@dataclass(frozen=True)
class GatedCDRule(TwoStreamsForKSteps):
    """Refusal-gated contrast over two streams (O, S) for ``steps`` tokens, then O alone."""

    refusal_ids: frozenset[int] = field(default_factory=frozenset)
    alpha: float = 4.5
    lam: float = 0.9
    beta: float = 0.01
    steps: int = 10
    harm: float | None = None  # the probe's P(harmful) for this request; None = no probe
    threshold: float = 0.5  # τ: harm >= τ means harmful
    ban_below: float = 0.0  # harm below this also bans refusal starts
    refuse_above: float | None = None  # harm at or above this: the refusing stream's logits
    name: str = "gated_cd"

    def __post_init__(self) -> None:
        validate_adacd_params(self.alpha, self.lam, self.beta, self.steps)
        if self.steps > 0 and not self.refusal_ids:
            raise ConfigError("gated_cd: refusal_ids is empty (no refusal-start tokens)")
        check_gate(self.threshold, self.ban_below, self.refuse_above)

    @property
    def strengthen(self) -> bool:
        """The probe is sure the prompt is harmful: push the first K tokens towards refusal."""
        return (self.harm is not None and self.refuse_above is not None
                and self.harm >= self.refuse_above)

    @property
    def harmful(self) -> bool:
        """The probe found the prompt harmful but not surely so: decode it plainly, one stream."""
        return self.harm is not None and self.harm >= self.threshold and not self.strengthen

    @property
    def n_streams(self) -> int:
        return 1 if self.harmful else super().n_streams

    def streams_needed(self, step: int) -> int:
        return 1 if self.harmful else super().streams_needed(step)

    @property
    def defers(self) -> bool:
        """Whether S may wait until O starts a refusal: everywhere but the refuse zone (which
        reads S at every guarded step) and a one-stream request."""
        return self.n_streams > 1 and not self.strengthen

    def streams_now(self, step: int, z_o: NDArray[np.float32]) -> int:
        """S is read only at a guarded step whose O starts a refusal (the gate)."""
        if step >= self.steps or self.harmful:
            return 1
        if self.strengthen or int(np.argmax(z_o)) in self.refusal_ids:
            return 2
        return 1

    def combine(
        self, logits: NDArray[np.float32], step: int
    ) -> tuple[NDArray[np.float32], StepInfo | None]:
        if step >= self.steps:
            return logits[0], None
        probe = {} if self.harm is None else {"harm": self.harm}
        if self.harmful:
            return logits[0], {"mode": "plain", **probe}
        if self.strengthen:
            own = int(np.argmax(logits[0])) in self.refusal_ids
            return logits[0 if own else 1], {"mode": "refuse", **probe}
        if len(logits) == 1:  # S deferred: O does not start a refusal (streams_now said so)
            return logits[0], {"mode": "plain", **probe}
        z, info = gated_cd_logits(
            logits[0], logits[1], refusal_ids=self.refusal_ids,
            alpha=self.alpha, lam=self.lam, beta=self.beta, confirm=self.harm is None,
            ban=self.harm is not None and self.harm < self.ban_below,
        )
        return z, {**info, **probe}
