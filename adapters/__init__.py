"""Model backends (installed as ``guardrail.adapters``). Each turns token streams into logits.

Backends import their heavy libraries lazily: ``guardrail.adapters`` itself needs neither
llama-cpp-python nor torch.
"""

from guardrail.adapters.base import Backend, Streams

__all__ = ["Backend", "Streams"]
