"""Decision logging: one record per guarded step, when a policy asks for it.

``logging: {decisions: true}`` in a policy makes callers (the chat model, ``guardrail chat``)
pass each step's rule info here; it goes to the ``guardrail.decisions`` logger at the policy's
level, so operators can see which steps were decoded in refusal or comply mode.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from guardrail.policy.schema import Policy

logger = logging.getLogger("guardrail.decisions")


def format_step(step: int, info: Mapping[str, Any] | None) -> str:
    """``step 3: mode=refuse agreement=1.000 p_plain=0.412 p_safety=0.388`` (floats rounded)."""
    if not info:
        return f"step {step}: unguarded"
    parts = [
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in info.items()
        if k != "step"
    ]
    return f"step {step}: " + " ".join(parts)


def log_step(policy: Policy, step: int, info: Mapping[str, Any] | None) -> None:
    """Log one step's decision if ``policy.logging.decisions`` is on (guarded steps only)."""
    if not policy.logging.decisions or not info:
        return
    level = logging.getLevelName(policy.logging.level)
    logger.log(level, "policy %s %s", policy.name, format_step(step, info))


__all__ = ["format_step", "log_step"]
