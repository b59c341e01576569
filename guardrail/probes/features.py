"""The probe feature: what a hidden-state probe reads from a conversation.

The model's final hidden state (after its last norm) at the prompt's last token (the
conversation rendered with the model's chat template, generation prompt included), next to the
mean of the same states over the tokens of the last user message (``FEATURE``). The last token
carries what the model is about to do (answer or refuse), the user-message mean what was asked.
Probes saved with the last token alone (``FEATURE_LAST``) still load. Shared by the prompt probe
(gated_cd's switch, the experts' probe router) and the refusal probe (which reads the answer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from guardrail.adapters.base import Backend, HasHiddenStates, Message, require
from guardrail.adapters.chat_encoding import ChatSegment
from guardrail.errors import ConfigError

FEATURE_LAST = "last_layer_last_prompt_token"
FEATURE = "last_layer_last_token_and_user_mean"
FEATURES = (FEATURE, FEATURE_LAST)


@dataclass(frozen=True)
class Encoded:
    """A conversation as the model reads it: its prompt text, ids and chat segments (message
    text is text: :meth:`~guardrail.adapters.base.Backend.encode_chat_segments`)."""

    text: str
    ids: list[int]
    segments: list[ChatSegment]


def encode(backend: Backend, messages: Sequence[Message], *,
           tools: Sequence[Mapping[str, Any]] | None = None,
           add_generation_prompt: bool = True) -> Encoded:
    """``messages`` (and ``tools``) encoded exactly as a request would be (the ids the probe
    reads)."""
    segments = backend.encode_chat_segments(messages, tools=tools,
                                            add_generation_prompt=add_generation_prompt)
    return Encoded("".join(s.text for s in segments), [i for s in segments for i in s.ids],
                   segments)


def token_span(backend: Backend, enc: Encoded, part: str) -> tuple[int, int] | None:
    """Token positions ``[start, end)`` of the last occurrence of ``part`` in the encoded
    conversation, or ``None`` when it cannot be located."""
    at = enc.text.rfind(part) if part else -1
    if at < 0:
        return None
    return backend.chat_token_span(enc.segments, at, at + len(part))


def user_span(backend: Backend, messages: Sequence[Message], enc: Encoded) -> tuple[int, int]:
    """Token positions ``[start, end)`` of the last user message's text in the encoded
    conversation (the whole prompt when the text cannot be located)."""
    users = [m for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
    content = str(users[-1]["content"]) if users else ""
    return token_span(backend, enc, content) or (0, len(enc.ids))


def _check_feature(feature: str) -> None:
    if feature not in FEATURES:
        raise ConfigError(f"probe feature must be one of {', '.join(FEATURES)}, got {feature!r}")


def _feature(backend: Backend, messages: Sequence[Message], enc: Encoded,
             states: NDArray[np.float32], feature: str) -> NDArray[np.float32]:
    if feature == FEATURE_LAST:
        return states[-1]
    start, end = user_span(backend, messages, enc)
    return np.concatenate([states[-1], states[start:end].mean(axis=0)]).astype(np.float32)


def conversation_feature(
    backend: Backend, messages: Sequence[Message], feature: str = FEATURE
) -> NDArray[np.float32]:
    """One conversation's probe feature (``[d]`` or ``[2d]``, see the module docstring)."""
    _check_feature(feature)
    model = require(backend, HasHiddenStates, "a prompt probe")
    enc = encode(backend, messages)
    return _feature(backend, messages, enc, model.prompt_hidden_states(enc.ids), feature)


#: Conversations read per batched call when computing many features (a progress-bar tick).
READ_BATCH = 32


def prompt_features(
    backend: Backend, conversations: Sequence[Sequence[Message]], *, feature: str = FEATURE,
    progress: bool = False,
) -> NDArray[np.float32]:
    """``[n, width]`` probe features of each conversation, from any backend that exposes hidden
    states (transformers and llama.cpp do), read in batches
    (:meth:`~guardrail.adapters.base.HasHiddenStates.prompt_hidden_states_many`): equal to
    :func:`conversation_feature` of each up to float rounding."""
    _check_feature(feature)
    model = require(backend, HasHiddenStates, "a prompt probe")
    rows: list[NDArray[np.float32]] = []
    with tqdm(total=len(conversations), desc="prompt features", unit="prompt",
              disable=not progress) as bar:
        for at in range(0, len(conversations), READ_BATCH):
            convs = conversations[at:at + READ_BATCH]
            encs = [encode(backend, c) for c in convs]
            states = model.prompt_hidden_states_many([e.ids for e in encs])
            rows += [_feature(backend, c, e, h, feature) for c, e, h in zip(convs, encs, states)]
            bar.update(len(convs))
    return np.stack(rows)
