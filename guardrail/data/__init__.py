"""Data shipped with guardrail: the XSTest prompts, XSTest's refusal prefixes and judge prompt.

See ``ATTRIBUTION.md`` in this folder for origins and licences.
"""
