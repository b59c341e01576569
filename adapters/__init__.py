"""Model backends (installed as ``guardrail.adapters``). Each turns token streams into logits.

Backends import their heavy libraries lazily: ``guardrail.adapters`` itself needs neither
llama-cpp-python nor torch. The roles and capabilities a backend may have are the protocols of
:mod:`guardrail.adapters.base`.
"""

from guardrail.adapters.base import (
    Backend,
    ChatText,
    Compute,
    GuardedStreams,
    HasHFTokenizer,
    HasHiddenStates,
    HasLayerHooks,
    HasLoraContexts,
    MultiModel,
    Streams,
    require,
)

__all__ = [
    "Backend",
    "ChatText",
    "Compute",
    "GuardedStreams",
    "HasHFTokenizer",
    "HasHiddenStates",
    "HasLayerHooks",
    "HasLoraContexts",
    "MultiModel",
    "Streams",
    "require",
]
