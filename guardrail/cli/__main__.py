"""``python -m guardrail.cli``."""

from guardrail.cli import app

app()
