"""The logits-processor stage of the decoding loop: constraints applied after the rule.

Each step the loop asks the request's rule for its final logits, then passes them through the
request's processors in order, then samples. A rule decides *how likely* each token is (AdaCD,
gated contrast, experts); a processor decides *which tokens are allowed at all* (no end of turn
before ``min_new_tokens``, a forced tool call's JSON, later a grammar).

Rules vs processors:

* A rule is stateless: a pure function of the streams' logits and the step, shared by every
  request that uses it.
* A processor is a per-request object. It is given the request's generated ids every step and
  may keep incremental state derived from them (a parser position, an automaton state), so it
  must be built fresh for each request and never shared between requests decoded together.
  It must derive that state from the ids it is given (not from what it returned), so that what
  it sees is what was actually sampled.

This is the slot where a grammar engine plugs in: an llguidance (or similar) matcher becomes a
processor that advances on each new generated id and masks the logits to its allowed tokens.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray


@runtime_checkable
class LogitsProcessor(Protocol):
    """One constraint of a request, called by the loop after the rule and before sampling.

    The loop calls ``processor(logits, generated_ids, step, answer_logits)`` once per step:

    * ``logits`` ``[vocab]``: the final logits so far (the rule's, after earlier processors);
    * ``generated_ids``: every id sampled for this request before this step (end of turn
      included), a read-only view of the loop's own list; ``len(generated_ids) == step``;
    * ``step``: the index of the token being chosen (0 for the first generated token);
    * ``answer_logits`` ``[vocab]``: the answer stream's own logits this step, before the rule,
      for processors that need an ordering of tokens the rule masked out (the tool-call
      constraint falls back to it; most processors ignore it).

    It returns the new logits ``[vocab]``: ``-inf`` for tokens it forbids. It must not modify
    ``logits`` or ``answer_logits`` in place (either may be the backend's own buffer); copy
    first. Greedy and sampled decoding both honour the ``-inf`` entries.
    """

    def __call__(
        self,
        logits: NDArray[np.float32],
        generated_ids: Sequence[int],
        step: int,
        answer_logits: NDArray[np.float32],
    ) -> NDArray[np.float32]:
        """The constrained logits ``[vocab]`` for this step."""
        ...


class MinNewTokens:
    """Forbid the end-of-turn tokens until ``n`` tokens have been generated.

    What ``GenerationRequest.min_new_tokens`` asks for; the loop adds it after the request's own
    processors (so it sees their output, as the inline mask it replaces did). Stateless.
    """

    def __init__(self, eot_ids: Collection[int], n: int) -> None:
        self.n = n
        self.eot_index = np.fromiter(eot_ids, dtype=np.int64)

    def __call__(
        self,
        logits: NDArray[np.float32],
        generated_ids: Sequence[int],
        step: int,
        answer_logits: NDArray[np.float32],
    ) -> NDArray[np.float32]:
        if step >= self.n:
            return logits
        out = logits.copy()
        out[self.eot_index] = -np.inf
        return out

    def __repr__(self) -> str:
        return f"MinNewTokens(eot_ids={self.eot_index.tolist()}, n={self.n})"
