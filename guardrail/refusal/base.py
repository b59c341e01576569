"""What every refusal detector returns, and the shape a detector has.

Detectors are plain callables ``(prompt, response) -> RefusalResult`` so that anything (a keyword
list, a local judge model, a classifier) can be plugged into the chat model and the evaluation.
Each result names the detector that decided, so every reported number can be traced to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

Label = Literal["full_compliance", "full_refusal", "partial_refusal"]
LABELS: tuple[Label, ...] = ("full_compliance", "full_refusal", "partial_refusal")
"""XSTest's three answer classes; a refusal is a full or a partial refusal."""


@dataclass(frozen=True)
class RefusalResult:
    """Whether an answer refuses, which detector said so, and the class it chose.

    ``raw`` keeps a judge's own output text (empty for keyword detectors) so that a surprising
    decision can be checked by eye; ``score`` is the probability of a refusal from a detector
    that computes one (None otherwise).
    """

    refused: bool
    detector: str
    label: str = ""
    raw: str = ""
    score: float | None = None  # P(refusal) where the detector has one (the refusal probe)


@runtime_checkable
class Detector(Protocol):
    """A refusal detector: ``detector(prompt, response)`` decides one answer."""

    name: str

    def __call__(self, prompt: str, response: str) -> RefusalResult: ...

    def detect_many(self, pairs: Sequence[tuple[str, str]]) -> list[RefusalResult]:
        """Decide several ``(prompt, response)`` pairs (batched where the detector can)."""
        ...


@runtime_checkable
class DecidesEarly(Protocol):
    """A detector that can decide on how an answer starts, before it is finished.

    ``decide_prefix(prompt, partial)`` returns the verdict every continuation of ``partial``
    would get (so a held answer can be released, or kept held, while it streams), or None while
    it cannot tell yet. A detector without it (the judge) decides the whole answer only.
    """

    def decide_prefix(self, prompt: str, partial: str) -> RefusalResult | None: ...

