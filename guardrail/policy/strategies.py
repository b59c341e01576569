"""Decoding strategies a policy can name (``strategy.kind``), one model each."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, Field, model_validator

from guardrail.decoding.adacd import DEFAULT_SAFETY_PROMPT
from guardrail.decoding.gated_cd import check_gate
from guardrail.policy.base import Float, Int, Strict
from guardrail.policy.model import ModelConfig


class PlainStrategy(Strict):
    """No guarding: the model's own next-token distribution."""

    kind: Literal["plain"] = "plain"


class _ContrastParams(Strict):
    """Parameters shared by the contrastive strategies (AdaCD's, docs/methods.md §1.3)."""

    safety_prompt: str = Field(
        DEFAULT_SAFETY_PROMPT,
        min_length=1,
        description="Extreme safety prompt given to the contrast stream as a system message.",
    )
    alpha: Float = Field(4.5, ge=0, description="α, contrast strength.")
    lam: Float = Field(
        0.9,
        gt=0,
        le=1,
        validation_alias=AliasChoices("lam", "lambda"),
        description="λ, agreement threshold (also the confidence factor).",
    )
    beta: Float = Field(0.01, ge=0, lt=1, description="β, plausibility cut-off.")
    steps: Int = Field(10, ge=0, description="K, number of generated tokens under contrast.")


class AdaCDStrategy(_ContrastParams):
    """AdaCD, adaptive contrastive decoding (paper defaults)."""

    kind: Literal["adacd"] = "adacd"


DEFAULT_REFUSAL_PHRASES: tuple[str, ...] = (
    "I'm sorry", "I am sorry", "Sorry", "I apologize", "I cannot", "I can't", "I'm unable",
    "I am unable", "As an AI", "Unfortunately", "No,",
)


class ForcedCheck(Strict):
    """The forced-path check (guardrail/decoding/forced_check.py): an answer the ban or the
    contrast changed is held from its first changed token, read again after ``after`` tokens
    by the probe on prompt + answer so far, and dropped for the model's own answer when the
    probe then finds it harmful. Off by default: on the dev model it caught none of the forced
    harmful answers (docs/overrefusal_study.md, stage 5)."""

    after: Int = Field(
        12, ge=1, le=64,
        description="Tokens of the changed answer, the first changed one included, decoded "
        "before the check reads them (held back from the caller until then).",
    )
    threshold: Float = Field(
        0.5, gt=0, le=1,
        description="P(harmful) of prompt + partial answer at or above which the answer falls "
        "back to the model's own.",
    )


class ProbeGate(Strict):
    """A prompt probe that tells harmful from harmless requests (``guardrail router train``)."""

    path: str = Field(
        min_length=1,
        description="Probe router file (safetensors) trained on this model, or `auto`: train one "
        "on first use from the shipped calibration prompts (XSTest rows i % 3 != 0, JailbreakBench "
        "even rows, Vicuna-Bench) and cache it.",
    )
    threshold: Float = Field(
        0.5, ge=0, le=1, description="τ: P(harmful) >= τ keeps the model's own answer."
    )
    ban_below: Float = Field(
        0.0, ge=0, le=1,
        description="Below this P(harmful), refusal-start tokens are also banned (the contrast "
        "alone cannot undo a refusal both streams are sure of); must not exceed threshold.",
    )

    refuse_above: Float | None = Field(
        None, ge=0, le=1,
        description="At or above this P(harmful), each of the first K tokens comes from the "
        "model's own stream where it starts a refusal, else from the safety stream (the "
        "conversation with the safety instruction); null = never. Must not be below threshold.",
    )

    check: ForcedCheck | None = Field(
        None,
        description="Read an answer the ban or contrast changed again before releasing it, and "
        "fall back to the model's own answer when it reads harmful; null = no check.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> ProbeGate:
        check_gate(self.threshold, self.ban_below, self.refuse_above)
        return self


class GatedCDStrategy(_ContrastParams):
    """Refusal-gated contrastive decoding: AdaCD's comply contrast only where the plain stream
    starts a refusal that AdaCD's switch (or a prompt probe) does not confirm; plain decoding
    otherwise. The safety stream keeps the template's default (or the deployment) system prompt
    and adds the safety prompt to it (docs/overrefusal_study.md)."""

    kind: Literal["gated_cd"] = "gated_cd"
    refusal_phrases: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSAL_PHRASES),
        min_length=1,
        description="Phrases whose first token marks the plain stream as starting a refusal.",
    )
    probe: ProbeGate | None = Field(
        None,
        description="Decide harmful vs harmless with this probe instead of AdaCD's switch: "
        "harmful prompts are decoded plainly, refusals of harmless ones are undone.",
    )


class PromptExpert(Strict):
    """An expert that is the same model under a system prompt (portable mode)."""

    kind: Literal["prompt"] = "prompt"
    system_prompt: str | None = Field(
        None, description="System prompt of this expert's stream; null = the conversation as given."
    )


class LoraAdapterExpert(Strict):
    """A LoRA adapter on down_proj: on transformers a PEFT adapter directory, mixed inside every
    layer (faithful mode); on llama.cpp a GGUF LoRA file, applied to a context of its own so
    only this expert's stream sees it (portable mode; docs/experts.md)."""

    kind: Literal["lora"] = "lora"
    path: str = Field(
        min_length=1,
        description="PEFT adapter directory (transformers) or GGUF LoRA file (llama.cpp; "
        "`guardrail experts convert-lora` makes one from a PEFT adapter).",
    )


class ModelExpert(Strict):
    """Another model that shares the guarded model's tokenizer (portable mode): its stream runs
    on that model, under its own chat template."""

    kind: Literal["model"] = "model"
    model: ModelConfig = Field(description="The expert model (loaded once, like any model).")
    system_prompt: str | None = Field(
        None, description="System prompt of this expert's stream; null = the conversation as given."
    )


Expert = Annotated[
    PromptExpert | LoraAdapterExpert | ModelExpert, Field(discriminator="kind")
]


class FixedRouter(Strict):
    """Constant weights: (1, 0) = the safety expert alone, (0, 1) = the helpfulness expert."""

    kind: Literal["fixed"] = "fixed"
    alpha: Float = Field(0.5, ge=0, description="α, weight of the safety expert.")
    beta: Float = Field(0.5, ge=0, description="β, weight of the helpfulness expert.")


class AgreementRouter(Strict):
    """Per-token α = AdaCD's agreement ratio between the experts, β = 1 − α (portable mode)."""

    kind: Literal["agreement"] = "agreement"


class FileRouter(Strict):
    """A router file: a prompt probe (portable) or per-layer router (faithful)."""

    kind: Literal["file"] = "file"
    path: str = Field(min_length=1, description="Router safetensors file.")


Router = Annotated[FixedRouter | AgreementRouter | FileRouter, Field(discriminator="kind")]


class ExpertsStrategy(Strict):
    """MidPO-style mix of a safety expert and a helpfulness expert with a router."""

    kind: Literal["experts"] = "experts"
    safety: Expert = Field(
        default_factory=lambda: PromptExpert(system_prompt=DEFAULT_SAFETY_PROMPT),
        description="The safety expert.",
    )
    helpfulness: Expert = Field(
        default_factory=PromptExpert, description="The helpfulness expert."
    )
    router: Router = Field(default_factory=AgreementRouter, description="How experts are weighed.")
    scale: Float | None = Field(
        None, gt=0, description="s of the LoRA experts' deltas; null = each adapter's own."
    )
    adacd: AdaCDStrategy | None = Field(
        None, description="Run AdaCD on top of the mixture (portable mode)."
    )

    @model_validator(mode="after")
    def _scale_needs_lora(self) -> ExpertsStrategy:
        if self.scale is not None and "lora" not in {self.safety.kind, self.helpfulness.kind}:
            raise ValueError("scale applies to LoRA experts, and neither expert is kind: lora")
        return self


Strategy = Annotated[
    PlainStrategy | AdaCDStrategy | GatedCDStrategy | ExpertsStrategy,
    Field(discriminator="kind"),
]



__all__ = [
    "AdaCDStrategy", "ExpertsStrategy", "GatedCDStrategy", "ModelExpert", "PlainStrategy",
    "ProbeGate", "Strategy",
]
