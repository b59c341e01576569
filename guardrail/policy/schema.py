"""The policy schema: one source of truth for what a YAML safety policy may say.

Every model forbids unknown keys and is frozen; every field is described (the descriptions feed
the JSON Schema and the generated policy reference).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator, model_validator

from guardrail.policy.base import Bool, Float, Int
from guardrail.policy.base import Strict as _Strict
from guardrail.policy.model import ModelConfig
from guardrail.policy.text import normalise
from guardrail.policy.strategies import AdaCDStrategy, PlainStrategy, Strategy


class SamplingConfig(_Strict):
    """How tokens are drawn and when the answer ends."""

    temperature: Float = Field(0.0, ge=0, description="0 = greedy; otherwise sampling temperature.")
    top_p: Float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (1 = off).")
    top_k: Int = Field(0, ge=0, description="Keep the k most likely tokens (0 = off).")
    seed: Int | None = Field(None, ge=0, description="Seed for sampling (null = random).")
    max_new_tokens: Int = Field(256, ge=1, description="Most tokens generated per answer.")
    stop: list[str] = Field(default_factory=list, description="Strings that end the answer.")


Action = Literal["allow", "replace", "raise"]


class JudgeConfig(_Strict):
    """The model that judges whether an answer is a refusal (``detector: judge``)."""

    model: ModelConfig | None = Field(
        None, description="Judge model; null means the guarded model itself (no second load)."
    )
    max_new_tokens: Int = Field(16, ge=1, le=256, description="Most tokens of the judge's verdict.")


class RefusalProbeConfig(_Strict):
    """A learned refusal judge (``detector: probe``): a local model reads the answer and a
    logistic regression trained on human labels decides (docs/evaluation.md)."""

    path: str = Field(
        "shipped",
        description="Refusal probe file (`guardrail refusal train`); `shipped` is the one in the "
        "package, trained on XSTest's human-labelled answers for the embedded model.",
    )
    model: ModelConfig | None = Field(
        None,
        description="The model the probe reads (the one it was trained on); null means the "
        "embedded SmolLM2-135M-Instruct on llama.cpp.",
    )
    threshold: Float | None = Field(
        None, gt=0, lt=1, description="P(refusal) at or above which an answer is a refusal; "
        "null means the file's (0.5).",
    )


class RefusalConfig(_Strict):
    """How an answer is recognised as a refusal."""

    detector: Literal["string_match", "judge", "probe"] = Field(
        "string_match",
        description="string_match: the answer starts with or contains a refusal phrase; "
        "judge: a model answers XSTest's judge prompt; probe: a learned refusal judge reads the "
        "answer.",
    )
    prefixes: list[str] | None = Field(
        None, description="Refusal phrases for string_match; null means XSTest's list."
    )
    judge: JudgeConfig | None = Field(
        None, description="Judge settings (detector: judge only); null means the defaults."
    )
    probe: RefusalProbeConfig | None = Field(
        None, description="Refusal probe settings (detector: probe only); null means the defaults."
    )

    @field_validator("prefixes")
    @classmethod
    def _no_empty_prefix(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not p.strip() for p in v):
            raise ValueError("refusal phrases must not be empty (an empty phrase matches all)")
        return v

    @model_validator(mode="after")
    def _judge_needs_judge_detector(self) -> RefusalConfig:
        if self.judge is not None and self.detector != "judge":
            raise ValueError("judge settings are only used with detector: judge")
        if self.probe is not None and self.detector != "probe":
            raise ValueError("probe settings are only used with detector: probe")
        return self


class ActionConfig(_Strict):
    """What to do when an answer is a refusal or a request matches a rule."""

    action: Action = Field(
        "allow",
        description="allow: pass the answer through; replace: answer with `message` instead; "
        "raise: raise an error (RefusalError for refusals).",
    )
    message: str = Field(
        "I can't help with that.", description="The answer given instead (action: replace)."
    )


class MatchRule(_Strict):
    """A request rule: a regular expression searched in the user's latest message."""

    name: str = Field(..., min_length=1, description="Rule name (reported when it matches).")
    pattern: str = Field(
        ..., min_length=1, description="Python regular expression, searched case-insensitively."
    )
    action: Action | None = Field(
        None, description="Action when it matches; null means the policy's on_match action."
    )
    message: str | None = Field(
        None, description="Replacement answer; null means the policy's on_match message."
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v, re.IGNORECASE)
        except re.error as e:
            raise ValueError(f"not a valid regular expression: {e}") from None
        return v

    def search(self, text: str) -> bool:
        """Whether the rule's pattern occurs in ``text`` as written or normalised (NFKC, no
        zero-width characters, case-folded: :func:`guardrail.policy.text.normalise`)."""
        return any(re.search(self.pattern, t, re.IGNORECASE) is not None
                   for t in (text, normalise(text)))


#: Call options a caller may set unless the policy says otherwise: sampling only. Nothing that
#: changes the guard (strategy parameters, the deployment prompt, the policy) is in it.
DEFAULT_CALLER_OPTIONS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed")
CALLER_OPTIONS = (*DEFAULT_CALLER_OPTIONS, "system_prompt", "alpha", "lam", "beta", "steps",
                  "safety_prompt")
"""Every per-call option a policy can grant to callers."""


class CallerRights(_Strict):
    """What a caller (per-call options, ``configurable``, a request to the server) may change.

    The operator writes the policy and builds the model; a caller only sends messages and, within
    these rights, options. By default a caller may tune sampling and nothing else: it cannot
    switch policy, change the strategy's parameters or replace the deployment prompt.
    """

    options: list[Literal[
        "max_new_tokens", "temperature", "top_p", "top_k", "seed", "system_prompt", "alpha",
        "lam", "beta", "steps", "safety_prompt",
    ]] = Field(
        default_factory=lambda: list(DEFAULT_CALLER_OPTIONS),
        description="Per-call options a caller may set (the rest are refused). Default: the "
        "sampling options. Granting alpha/steps/system_prompt/... lets callers weaken the guard.",
    )
    policies: list[str] = Field(
        default_factory=list,
        description="Policies a caller may switch to, by name (shipped names, or names the "
        "operator registered on the model); never a path. Default: none.",
    )

    @field_validator("policies")
    @classmethod
    def _names_only(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name or "/" in name or "\\" in name or name.endswith((".yaml", ".yml")):
                raise ValueError(f"callers.policies takes policy names, not paths: {name!r}")
        return v


class LoggingConfig(_Strict):
    """Logging of decoding decisions through the ``guardrail`` logger."""

    decisions: Bool = Field(
        False, description="Log each guarded step's mode and agreement (one record per step)."
    )
    level: Literal["DEBUG", "INFO", "WARNING"] = Field(
        "INFO", description="Log level of the decision records."
    )


class Policy(_Strict):
    """A safety policy: model, deployment prompt, decoding strategy, sampling, refusal handling,
    request rules and decision logging."""

    name: str = Field("custom", description="Policy name (shown in metadata and reports).")
    description: str = Field("", description="What the policy is for.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model to load.")
    system_prompt: str | None = Field(
        None, description="Deployment system prompt put before every conversation."
    )
    strategy: Strategy = Field(
        default_factory=PlainStrategy, description="Decoding strategy and its parameters."
    )
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig, description="Sampling and stopping."
    )
    refusal: RefusalConfig = Field(
        default_factory=RefusalConfig, description="How refusals are detected."
    )
    on_refusal: ActionConfig = Field(
        default_factory=ActionConfig, description="What to do when the answer is a refusal."
    )
    rules: list[MatchRule] = Field(
        default_factory=list, description="Request rules, tried in order; the first match acts."
    )
    on_match: ActionConfig = Field(
        default_factory=ActionConfig,
        description="What to do when a request matches a rule (a rule may override it).",
    )
    logging: LoggingConfig = Field(
        default_factory=LoggingConfig, description="Logging of decoding decisions."
    )
    callers: CallerRights = Field(
        default_factory=CallerRights,
        description="What callers may change per request (default: sampling only; no policy "
        "switch, no strategy or deployment-prompt override).",
    )
    extends: str | None = Field(
        None,
        description="Policy this one builds on: a shipped name or a path relative to this file. "
        "Its fields are merged under this file's (mappings merge, lists and values replace); "
        "resolved at load, so a loaded policy shows null.",
    )

    @field_validator("rules")
    @classmethod
    def _unique_rule_names(cls, v: list[MatchRule]) -> list[MatchRule]:
        names = [r.name for r in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(dup)}")
        return v

    def match(self, text: str | Sequence[str]) -> tuple[MatchRule, ActionConfig] | None:
        """The first rule (in order) matching ``text`` (or any of several texts) and the action
        it resolves to, or None."""
        texts = [text] if isinstance(text, str) else list(text)
        for rule in self.rules:
            if any(rule.search(t) for t in texts):
                return rule, ActionConfig(
                    action=rule.action or self.on_match.action,
                    message=rule.message if rule.message is not None else self.on_match.message,
                )
        return None
