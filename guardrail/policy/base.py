"""Base model of every policy section: unknown keys are errors, values are frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Forbids unknown keys (typos are errors, never ignored) and freezes the values.

    ``inf`` and ``nan`` are refused: no policy parameter means anything with them.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )
