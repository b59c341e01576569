"""Decode-time constraints: logits processors that only allow tokens keeping the output valid.

* :mod:`~guardrail.decoding.constraints.json_prefix`: is a text a valid prefix of a JSON value
  under a schema (the hand-written check the forced tool call uses);
* :mod:`~guardrail.decoding.constraints.tool_call`: :class:`ToolCallConstraint`, the forced tool
  call's processor.

They plug into the loop's processor stage (:mod:`guardrail.decoding.processors`), where a grammar
engine would plug in as well.
"""

from guardrail.decoding.constraints.json_prefix import (
    MAX_STRING,
    TOOLS_KEY,
    check_json_prefix,
    string_limit,
)
from guardrail.decoding.constraints.tool_call import ToolCallConstraint

__all__ = ["MAX_STRING", "TOOLS_KEY", "ToolCallConstraint", "check_json_prefix", "string_limit"]
