"""Declarative safety policies: schema and loading."""

from guardrail.policy.loader import load_policy, shipped_policies
from guardrail.policy.schema import (
    AdaCDStrategy,
    ModelConfig,
    PlainStrategy,
    Policy,
    SamplingConfig,
)

__all__ = [
    "AdaCDStrategy",
    "ModelConfig",
    "PlainStrategy",
    "Policy",
    "SamplingConfig",
    "load_policy",
    "shipped_policies",
]
