"""Reasoning models: a ``<think>...</think>`` section before the answer.

A chat template that knows ``</think>`` (Qwen3, DeepSeek-R1 distills, QwQ) marks a model that
may reason before it answers. Guarding the reasoning as if it were the answer would spend the
policy's guarded steps (AdaCD's K) on the model's scratch work and leave the answer itself
unguarded, so a call on such a model is decoded in two phases:

1. **Reasoning**: the answer stream alone, plain, until ``</think>`` (a stop string) or the
   budget. When the template does not open the section itself, the model may or may not open
   it: :class:`ReasoningOnly` ends the phase at once (an end-of-turn token) if the first tokens
   are not ``<think>``, and those tokens are dropped.
2. **Answer**: the policy's request as usual, every stream's prompt followed by the reasoning's
   token ids, so the guarded steps count from the answer's first token and a contrast stream
   reads the same reasoning.

The reasoning goes to ``additional_kwargs["reasoning_content"]``, which LangChain shows as a
``reasoning`` content block (``message.content_blocks``); the refusal detector reads the answer
only. A constrained answer (a forced tool call, a response format) is decoded without the
reasoning phase: its constraint starts at the first token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from guardrail.adapters.base import Backend
from guardrail.decoding.loop import GenerationRequest
from guardrail.decoding.rules import PlainRule

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class Reasoning:
    """How the template starts an answer: ``opened`` when its generation prompt already opened
    ``<think>`` (the model continues inside it)."""

    opened: bool


def reasoning_of(
    backend: Backend, messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
) -> Reasoning | None:
    """Whether an answer to ``messages`` may start with a reasoning section: None when the
    template knows no ``</think>`` or its generation prompt closes the section already
    (reasoning switched off, as Qwen3's ``enable_thinking=False`` does)."""
    template = backend.chat_template or ""
    if THINK_CLOSE not in template:
        return None
    full = backend.render(messages, tools=tools, add_generation_prompt=True)
    base = backend.render(messages, tools=tools, add_generation_prompt=False)
    tail = full[len(base):] if full.startswith(base) else full[-len(THINK_OPEN) - 64:]
    if THINK_CLOSE in tail:
        return None
    return Reasoning(opened=tail.rstrip().endswith(THINK_OPEN))


class ReasoningOnly:
    """A loop processor for the reasoning phase when the model opens the section itself: once
    the generated text cannot start with ``<think>``, only an end-of-turn token is allowed, so
    the phase ends and the answer phase decodes those tokens again under the policy."""

    def __init__(self, detokenize: Callable[[Sequence[int]], str], eot_ids: Sequence[int]):
        self.detokenize = detokenize
        self.eot = np.fromiter(eot_ids, dtype=np.int64)

    def __call__(
        self, logits: NDArray[np.float32], generated_ids: Sequence[int], step: int,
        answer_logits: NDArray[np.float32],
    ) -> NDArray[np.float32]:
        text = self.detokenize(list(generated_ids)).lstrip()
        if text.startswith(THINK_OPEN) or THINK_OPEN.startswith(text):
            return logits
        out = np.full_like(logits, -np.inf)
        out[self.eot] = 0.0
        return out


def reasoning_request(req: GenerationRequest, reasoning: Reasoning,
                      backend: Backend) -> GenerationRequest:
    """The reasoning phase of ``req``: its answer stream alone, plain, up to ``</think>``."""
    procs = [] if reasoning.opened else [ReasoningOnly(backend.detokenize,
                                                       sorted(backend.end_of_turn_ids))]
    return GenerationRequest(
        prompts=[req.prompts[0]], rule=PlainRule(), sampling=req.sampling,
        max_new_tokens=req.max_new_tokens, stop=[THINK_CLOSE], processors=procs,
    )


def visible_reasoning(text: str, reasoning: Reasoning) -> str:
    """The reasoning shown so far of the phase's text: inside the section, without the tag
    and the whitespace around it (trailing whitespace waits for what follows)."""
    if not reasoning.opened:
        start = text.find(THINK_OPEN)
        if start < 0:
            return ""
        text = text[start + len(THINK_OPEN):]
    return text.strip()


__all__ = ["Reasoning", "ReasoningOnly", "THINK_CLOSE", "THINK_OPEN", "reasoning_of",
           "reasoning_request", "visible_reasoning"]
