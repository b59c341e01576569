"""The trust boundary between the operator and a caller, enforced on per-call options.

The operator chooses the model, the policy and what callers may change (the policy's
``callers`` section, or the model's own ``callers``); a caller sends messages and, within those
rights, options. Every entry point that takes per-request options (the chat model's call
keywords and ``configurable``, the middleware's agent settings, the server's request body)
checks them here, so a request can never weaken the operator's guard or name a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from guardrail.errors import ConfigError
from guardrail.policy.loader import shipped_policies
from guardrail.policy.schema import CALLER_OPTIONS, CallerRights, Policy

Registry = Mapping[str, "str | Path | Policy"]
"""Policies the operator registered by name (a YAML path or a ``Policy``), for switching."""


def trusting(policies: list[str] | None = None) -> CallerRights:
    """Rights that let callers change every option (and switch to ``policies``): for code where
    the caller is the operator (notebooks, tests, batch jobs), never for a deployment."""
    return CallerRights(options=list(CALLER_OPTIONS), policies=list(policies or []))


def check_options(call: Mapping[str, Any], rights: CallerRights, policy: Policy) -> None:
    """Refuse any option in ``call`` (policy switch aside) that ``rights`` does not grant."""
    for key in call:
        if key != "policy" and key not in rights.options:
            granted = ", ".join(rights.options) or "none"
            raise ConfigError(
                f"call option {key!r} is not one callers may set under policy {policy.name!r} "
                f"(granted: {granted}); the operator grants more in the policy's "
                "`callers.options` or the model's `callers`"
            )


def resolve_switch(value: Any, rights: CallerRights, registry: Registry | None,
                   policy: Policy) -> str | Path | Policy:
    """The policy a caller asked to switch to, if ``rights`` allow it: by name only."""
    if not isinstance(value, str):
        raise ConfigError(
            f"policy: a call names a policy by name (a string), got {type(value).__name__}; "
            "to run another Policy object, build another model"
        )
    if value == policy.name:
        return policy
    if value not in rights.policies:
        allowed = ", ".join(rights.policies) or "none"
        raise ConfigError(
            f"policy: callers may not switch policy {policy.name!r} to {value!r} (allowed: "
            f"{allowed}); a request names policies from the operator's `callers.policies`, "
            "never a file"
        )
    if registry and value in registry:
        return registry[value]
    if value in shipped_policies():
        return value
    raise ConfigError(f"policy: {value!r} is allowed but is neither registered on the model nor "
                      "a shipped policy")


def switched(operator: Policy, target: Policy) -> Policy:
    """What a permitted switch runs: ``target``'s decoding (strategy, sampling, refusal
    detection and ``on_refusal``) inside the operator's deployment, which a caller cannot shed:
    the operator's model, deployment prompt (``target``'s only where the operator set none),
    request rules (first, each with its resolved action; ``target``'s own rules after them)
    and caller rights."""
    if target is operator:
        return operator
    own = [r.model_copy(update={
        "action": r.action or operator.on_match.action,
        "message": r.message if r.message is not None else operator.on_match.message,
    }) for r in operator.rules]
    names = {r.name for r in own}
    system = operator.system_prompt if operator.system_prompt is not None else target.system_prompt
    return target.model_copy(update={
        "model": operator.model, "system_prompt": system, "callers": operator.callers,
        "rules": [*own, *(r for r in target.rules if r.name not in names)],
    })


__all__ = ["Registry", "check_options", "resolve_switch", "switched", "trusting"]
