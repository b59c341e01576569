"""Declarative safety policies: schema, loading (``extends``, ``${VAR}``), reloading, reference.

Load one with :func:`load_policy` (a shipped name, a YAML path, or ``None`` for the default
named by ``$GUARDRAIL_POLICY``); follow a file as it changes with :class:`PolicySource`.
"""

from guardrail.policy.loader import (
    LoadedPolicy,
    default_policy_name,
    dump_policy,
    load_policy,
    load_policy_file,
    load_policy_text,
    shipped_policies,
    with_overrides,
)
from guardrail.policy.problems import PolicyProblem, PolicyValidationError
from guardrail.policy.schema import (
    ActionConfig,
    AdaCDStrategy,
    CallerRights,
    JudgeConfig,
    LoggingConfig,
    MatchRule,
    ModelConfig,
    PlainStrategy,
    Policy,
    RefusalConfig,
    RefusalProbeConfig,
    SamplingConfig,
)
from guardrail.policy.watch import PolicySource

__all__ = [
    "ActionConfig",
    "AdaCDStrategy",
    "CallerRights",
    "JudgeConfig",
    "LoadedPolicy",
    "LoggingConfig",
    "MatchRule",
    "ModelConfig",
    "PlainStrategy",
    "Policy",
    "PolicyProblem",
    "PolicySource",
    "PolicyValidationError",
    "RefusalConfig",
    "RefusalProbeConfig",
    "SamplingConfig",
    "default_policy_name",
    "dump_policy",
    "load_policy",
    "load_policy_file",
    "load_policy_text",
    "shipped_policies",
    "with_overrides",
]
