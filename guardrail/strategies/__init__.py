"""Decoding strategies as plans: one module per ``strategy.kind``, found through a registry.

Each module registers a planner (:func:`~guardrail.strategies.registry.register`) that turns
its strategy's config, the engine and the conversation into a
:class:`~guardrail.strategies.registry.Plan`. A new strategy is one new module here, imported
below, plus its config model in :mod:`guardrail.policy.strategies`.
"""

from guardrail.strategies import adacd, experts, gated_cd, plain  # noqa: F401 - they register
from guardrail.strategies.registry import Plan, plan, planner, register, registered

__all__ = ["Plan", "plan", "planner", "register", "registered"]
