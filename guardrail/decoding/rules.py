"""The rule protocol: turn the live streams' logits into one row of final logits.

A rule is stateless across requests; the loop hands it the step number. ``streams_needed(step)``
says how many leading streams the rule still needs *after* ``step``, so the loop can free the
rest (AdaCD drops its safety stream after its K contrastive steps).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

StepInfo = dict[str, Any]
"""What a rule records about one step (mode, agreement, confidences, ...); None when nothing."""


@runtime_checkable
class Rule(Protocol):
    """A decoding rule over ``n_streams`` streams of one request."""

    name: str

    @property
    def n_streams(self) -> int:
        """Streams the rule needs at step 0 (stream 0 is the answer stream)."""
        ...

    def combine(
        self, logits: NDArray[np.float32], step: int
    ) -> tuple[NDArray[np.float32], StepInfo | None]:
        """Final logits ``[vocab]`` from the live streams' logits ``[n_live, vocab]``."""
        ...

    def streams_needed(self, step: int) -> int:
        """Leading streams still needed after ``step`` (1 = the answer stream alone)."""
        ...


@dataclass(frozen=True)
class PlainRule:
    """No guarding: the answer stream's own logits. Equals the backend's own greedy decoding."""

    name: str = "plain"

    @property
    def n_streams(self) -> int:
        return 1

    def combine(
        self, logits: NDArray[np.float32], step: int
    ) -> tuple[NDArray[np.float32], StepInfo | None]:
        return logits[0], None

    def streams_needed(self, step: int) -> int:
        return 1


class TwoStreamsForKSteps:
    """Stream schedule shared by the contrastive rules: the answer stream O and a contrast
    stream S for the first ``steps`` tokens, then O alone (S is freed after step K-1)."""

    steps: int

    @property
    def n_streams(self) -> int:
        return 2 if self.steps > 0 else 1

    def streams_needed(self, step: int) -> int:
        return 2 if step + 1 < self.steps else 1


@runtime_checkable
class DeferringRule(Protocol):
    """A rule whose streams after the answer stream are opened only when a step needs them.

    ``defers`` says whether this request's rule may start with the answer stream alone;
    ``streams_now(step, z_o)`` how many leading streams it needs to combine ``step``, given the
    answer stream's logits. The loop opens the missing ones then, prefilled with their prompts
    and every token generated so far (in step with the answer), and calls ``combine`` with
    them; until then ``combine`` gets the answer stream's row alone. A backend whose streams
    cannot be added to a running set opens every stream at the start instead.
    """

    @property
    def defers(self) -> bool: ...

    def streams_now(self, step: int, z_o: NDArray[np.float32]) -> int: ...


@runtime_checkable
class AttachedRule(Protocol):
    """A rule that changes the model while its request runs (faithful experts hook every
    layer): the loop decodes its request alone, inside ``attached()``."""

    def attached(self) -> AbstractContextManager[Any]:
        """Context in which the model carries the rule's changes."""
        ...
