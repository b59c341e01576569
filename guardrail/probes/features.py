"""The probe feature: what a hidden-state probe reads from a conversation.

The model's final hidden state (after its last norm) at the prompt's last token (the
conversation rendered with the model's chat template, generation prompt included), next to the
mean of the same states over the tokens of the last user message (``FEATURE``). The last token
carries what the model is about to do (answer or refuse), the user-message mean what was asked.
Probes saved with the last token alone (``FEATURE_LAST``) still load. Shared by the prompt probe
(gated_cd's switch, the experts' probe router) and the refusal probe (which reads the answer).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from guardrail.adapters.base import Backend, HasHiddenStates, Message, require
from guardrail.errors import ConfigError

FEATURE_LAST = "last_layer_last_prompt_token"
FEATURE = "last_layer_last_token_and_user_mean"
FEATURES = (FEATURE, FEATURE_LAST)


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
    convs = tqdm(conversations, desc="prompt features", unit="prompt", disable=not progress)
    return np.stack([conversation_feature(backend, c, feature) for c in convs])
