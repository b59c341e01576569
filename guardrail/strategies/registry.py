"""The strategy registry: ``strategy.kind`` → the function that plans a request under it.

A strategy turns (its validated config, the engine, the conversation, the tools) into a
:class:`Plan`: the token ids of each stream it needs (answer stream first), the rule that
combines their logits, and the backend that runs them when it is not the engine's own. The
engine looks the planner up here by kind, so adding a strategy is one new module that calls
:func:`register` and one import line in :mod:`guardrail.strategies`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from guardrail.adapters.base import Backend, Message
from guardrail.decoding.forced_check import ForcedPathCheck
from guardrail.decoding.rules import Rule
from guardrail.errors import ConfigError

if TYPE_CHECKING:  # the engine calls the planners; they only read it
    from guardrail.engine import Engine

Tools = Sequence[Mapping[str, Any]] | None


@dataclass
class Plan:
    """How one request is decoded: its streams' prompts, the rule, and where they run."""

    prompts: list[list[int]]
    rule: Rule
    backend: Backend | None = None  # None: the engine's backend runs every stream
    probe: dict[str, float] = field(default_factory=dict)  # what a prompt probe read (harm, ...)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: probe_s (a prompt probe)
    check: ForcedPathCheck | None = None  # the forced-path check (guardrail/decoding/forced_check)


Planner = Callable[[Any, "Engine", list[dict[str, Any]], Tools], Plan]

_PLANNERS: dict[str, Planner] = {}


def register(kind: str) -> Callable[[Planner], Planner]:
    """Register the decorated function as the planner of ``strategy.kind == kind``."""

    def add(fn: Planner) -> Planner:
        if kind in _PLANNERS:
            raise ConfigError(f"strategy kind {kind!r} is registered twice")
        _PLANNERS[kind] = fn
        return fn

    return add


def planner(kind: str) -> Planner:
    """The planner of ``kind``; a clear error names the registered kinds."""
    try:
        return _PLANNERS[kind]
    except KeyError:
        raise ConfigError(
            f"strategy.kind {kind!r} has no planner; registered: {', '.join(sorted(_PLANNERS))}"
        ) from None


def registered() -> list[str]:
    """The strategy kinds that can be planned, sorted."""
    return sorted(_PLANNERS)


def plan(strategy: Any, engine: Engine, messages: Sequence[Message], tools: Tools = None) -> Plan:
    """Plan ``messages`` (the deployment prompt already merged) under ``strategy``."""
    return planner(strategy.kind)(strategy, engine, [dict(m) for m in messages], tools)


__all__ = ["Plan", "Planner", "Tools", "plan", "planner", "register", "registered"]
