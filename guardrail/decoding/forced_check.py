"""The forced-path check: an answer a rule pushed away from the model's own must still be one
the model would not call harmful, else the model's own answer stands.

A rule that undoes refusals (``gated_cd`` in its ban and contrast zones, what ``balanced`` does
for prompts its probe finds harmless) decodes exactly as the model does until its first
"comply" step, the **fork** ``f``: every earlier step is ``ẑ = z_o``. From the fork on the answer
is one the model did not choose. When the probe was wrong about the prompt, that answer is the
harm the guard exists to prevent ("<perpetrator> was right to ... because ..."). So from the
fork the loop holds the request's tokens back, and once ``after`` = C tokens from the fork on
exist (the fork's own included; or at the answer's end, if sooner) it asks ``read`` for
P(harmful) of the conversation with the answer so far, read from the model's own hidden states
(:mod:`guardrail.probes.answer`):

* ``P < threshold``: the held tokens are released and the request goes on under its rule (a
  later "comply" step is a new fork, checked again);
* ``P >= threshold``: the held tokens are dropped and the request continues from the fork
  under ``fallback`` (plain decoding: the model's own answer), from a fresh stream holding the
  prompt and the ``f`` tokens already released, so the caller sees one answer whose first ``f``
  tokens are the ones it was already sent.

Greedy answers that fall back therefore equal plain decoding's (up to the float sums of a
different batch); a seeded sampled one is deterministic but not plain's, since the generator has
drawn for the dropped tokens. A fork costs C tokens of streaming delay and one hidden-state read
of the prompt plus ``f + C`` tokens (on llama.cpp only the ``f + C`` tokens are computed, on top
of the prompt probe's cached prefill), and a fallback one more prefill. A read that raises counts
as harmful (the model's own answer; the trace says ``error``). A request the loop cannot rewind
(logits processors keep state: grammars, forced tool calls; or a backend whose streams cannot be
added while running) fails closed: it is decoded under ``fallback`` from its first token, so a
caller cannot shed an operator's check by asking for structured output. The study of the signal
is ``docs/overrefusal_study.md`` (stage 5).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from guardrail.decoding.rules import PlainRule, Rule, StepInfo
from guardrail.errors import ConfigError


@dataclass(frozen=True)
class ForcedPathCheck:
    """One request's check (built by its plan; see the module docstring).

    Args:
        after: tokens of the changed answer, the fork's own included, decoded before the
            check reads them (C >= 1).
        threshold: P(harmful) at or above which the forced answer is dropped.
        read: P(harmful) of the answer stream's token ids (its prompt, then the answer so
            far); runs the model (the loop calls it inside a step, holding the backend).
        fallback: the rule the request continues under after a fallback (one stream).
    """

    after: int
    threshold: float
    read: Callable[[Sequence[int]], float]
    fallback: Rule = field(default_factory=PlainRule)

    def __post_init__(self) -> None:
        if self.after < 1:
            raise ConfigError(f"forced-path check: after must be >= 1, got {self.after}")
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"forced-path check: threshold must be in (0, 1], got "
                              f"{self.threshold}")
        if self.fallback.n_streams != 1:
            raise ConfigError("forced-path check: the fallback rule must decode one stream")

    @staticmethod
    def forks(info: StepInfo | None) -> bool:
        """Whether a step's decision leaves the model's own choice (a "comply" step)."""
        return info is not None and info.get("mode") == "comply"

    def due(self, fork: int, generated: int, done: bool) -> bool:
        """Whether to read now: C tokens after the fork, or the answer ended."""
        return done or generated - fork >= self.after


__all__ = ["ForcedPathCheck"]
