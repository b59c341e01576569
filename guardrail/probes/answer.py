"""P(harmful) of a conversation *with a partial answer*, read from the model's hidden states:
the signal of the forced-path check (:mod:`guardrail.decoding.forced_check`).

The feature is the prompt probe's (:mod:`guardrail.probes.features`, ``FEATURE``) moved to the
answer: the final hidden state at the answer's last token next to the mean over the last user
message's tokens. By causality the user-message half does not depend on the answer; only the
first half moves with what the model has been made to say. So the prompt probe's weights read it
as they are (the check reads the prompt as the answer stream holds it, tools included, where the
prompt probe reads it without tools). A probe trained on such features (prompts followed by
answers: the study's "answer probe", docs/overrefusal_study.md stage 5) has the same width, but
no policy field names one yet: the check reads with the gate's own probe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from guardrail.adapters.base import Backend, HasHiddenStates, Message, require
from guardrail.errors import ConfigError
from guardrail.probes.features import FEATURE, encode, user_span
from guardrail.probes.logistic import probe_harm
from guardrail.probes.prompt import probe_feature
from guardrail.probes.weights import ProbeWeights


def answer_reader(
    probe: ProbeWeights, backend: Backend, messages: Sequence[Message],
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> Callable[[Sequence[int]], float]:
    """The check's read for one request: the answer stream's ids (its prompt, as encoded with
    ``tools``, then the answer so far) → P(harmful) under ``probe``, a probe reading
    ``FEATURE`` (the prompt probe itself, or one trained on answers)."""
    feature = probe_feature(probe)
    if feature != FEATURE:
        raise ConfigError(f"the forced-path check reads the feature {FEATURE!r}; this probe reads "
                          f"{feature!r} (train it again: guardrail calibrate --force, or "
                          "guardrail router train)")
    model = require(backend, HasHiddenStates, "the forced-path check")
    enc = encode(backend, messages, tools=tools)
    start, end = user_span(backend, messages, enc)
    prompt_len = len(enc.ids)

    def read(ids: Sequence[int]) -> float:
        # the prompt as the probe read it, then the answer: llama.cpp computes only the answer
        states = model.continued_hidden_states(ids, prompt_len)
        x = np.concatenate([states[-1], states[start:end].mean(axis=0)]).astype(np.float32)
        return float(probe_harm(probe, x[None])[0])

    return read


__all__ = ["answer_reader"]
