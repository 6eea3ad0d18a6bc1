"""The bases of every spec: frozen, and unknown keys are errors, or a name whose target
declares the keys it takes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class Strict(BaseModel):
    """Unknown keys are errors: a typo in YAML must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NamedOptions(BaseModel):
    """A ``name`` plus that target's own options, written beside it (``{name: mlp,
    hidden: [64]}``, ``{name: fedprox, mu: 0.01}``): the keys other than ``name`` are
    free here and checked by :meth:`check_options` against the parameters the named
    target declares, so a typo fails when the config loads, naming the target."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def options(self) -> dict[str, Any]:
        """The options as written (every key but ``name``)."""
        return dict(self.model_extra or {})

    def check_options(self) -> None:
        """Raise ``ValueError`` when ``name`` is unknown or an option is not the target's."""
        raise NotImplementedError

    @model_validator(mode="after")
    def _options_known(self) -> NamedOptions:
        self.check_options()
        return self
