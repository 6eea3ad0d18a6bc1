"""The base of every spec: frozen, and unknown keys are errors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown keys are errors: a typo in YAML must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
