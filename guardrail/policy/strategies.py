"""Decoding strategies a policy can name (``strategy.kind``), one model each."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, Field

from guardrail.decoding.adacd import DEFAULT_SAFETY_PROMPT
from guardrail.policy.base import Strict


class PlainStrategy(Strict):
    """No guarding: the model's own next-token distribution."""

    kind: Literal["plain"] = "plain"


class AdaCDStrategy(Strict):
    """AdaCD, adaptive contrastive decoding (paper defaults)."""

    kind: Literal["adacd"] = "adacd"
    safety_prompt: str = Field(
        DEFAULT_SAFETY_PROMPT,
        min_length=1,
        description="Extreme safety prompt given to the contrast stream as a system message.",
    )
    alpha: float = Field(4.5, ge=0, description="α, contrast strength.")
    lam: float = Field(
        0.9,
        gt=0,
        le=1,
        validation_alias=AliasChoices("lam", "lambda"),
        description="λ, agreement threshold (also the confidence factor).",
    )
    beta: float = Field(0.01, ge=0, lt=1, description="β, plausibility cut-off.")
    steps: int = Field(10, ge=0, description="K, number of generated tokens under contrast.")


Strategy = Annotated[PlainStrategy | AdaCDStrategy, Field(discriminator="kind")]



__all__ = ["AdaCDStrategy", "PlainStrategy", "Strategy"]
