"""What a participant learns and how: the task, the model, local training."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from actors.spec.base import NamedOptions, Strict

METRICS: dict[str, dict[str, bool]] = {
    "classification": {"accuracy": True, "macro_f1": True, "auroc": True, "loss": False},
    "regression": {"r2": True, "mse": False, "mae": False, "loss": False},
}
"""Each task's evaluation metrics, and whether higher is better. ``auroc`` exists for
two classes only; ``loss`` is the training loss on the test set."""


LOWER_IS_BETTER = frozenset(m for kind in METRICS.values() for m, higher in kind.items() if not higher)


TRAINED_TOGETHER = "batched"
"""Update metric: how many participants' local training ran as one computation (1: alone)."""


LOSSES = {"classification": ("cross_entropy",), "regression": ("mse", "huber")}


class TaskSpec(Strict):
    """What the model predicts: class labels, or real-valued targets (one or several).

    ``task: regression`` is short for ``task: {kind: regression}``. ``metric`` is the run's
    headline metric: what the progress line shows, what ``stop.target`` and tuning compare
    against, and what reports plot (default: accuracy, or R² for regression).
    """

    kind: Literal["classification", "regression"] = "classification"
    loss: Literal["cross_entropy", "mse", "huber"] | None = Field(
        None, description="default: cross_entropy for classification, mse for regression")
    huber_delta: float = Field(1.0, gt=0, description="huber: where the loss turns from squared to linear")
    metric: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"kind": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _fits_kind(self) -> TaskSpec:
        if self.loss is not None and self.loss not in LOSSES[self.kind]:
            raise ValueError(f"loss {self.loss!r} is not for {self.kind}; use {' or '.join(LOSSES[self.kind])}")
        if self.metric is not None and self.metric not in METRICS[self.kind]:
            raise ValueError(f"metric {self.metric!r} is not a {self.kind} metric; use one of: "
                             f"{', '.join(METRICS[self.kind])}")
        return self

    @property
    def loss_name(self) -> str:
        return self.loss or LOSSES[self.kind][0]

    @property
    def metric_name(self) -> str:
        return self.metric or ("accuracy" if self.kind == "classification" else "r2")

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.kind][self.metric_name]


BUILTIN_MODEL_OPTIONS: dict[str, frozenset[str]] = {
    "mlp": frozenset({"hidden", "dropout"}),
    "cnn": frozenset({"channels", "hidden"}),
    "gru": frozenset({"hidden", "layers"}),
    "lstm": frozenset({"hidden", "layers"}),
    "transformer": frozenset({"dim", "heads", "layers"}),
}
"""Options of the built-in factories in :mod:`actors.training.models`, stated here so validating a
config does not import torch (seconds); a test keeps it equal to the factories' signatures."""


class ModelSpec(NamedOptions):
    """``name`` plus the factory's own keyword options, checked against its signature."""

    name: str = "mlp"

    def check_options(self) -> None:
        if self.name in BUILTIN_MODEL_OPTIONS:
            allowed: set[str] | None = set(BUILTIN_MODEL_OPTIONS[self.name])
        elif ":" in self.name:  # a user's factory: importing it is the only way to see it
            from actors.training.models import factory_options, resolve_factory

            allowed = factory_options(resolve_factory(self.name))
        else:
            raise ValueError(
                f"unknown model {self.name!r}; known models: {', '.join(sorted(BUILTIN_MODEL_OPTIONS))}, "
                "or 'package.module:factory'"
            )
        extra = set(self.options)
        if allowed is not None and extra - allowed:
            raise ValueError(
                f"model {self.name!r} has no option(s) {sorted(extra - allowed)}; "
                f"allowed: {', '.join(sorted(allowed)) or 'none'}"
            )
        dropout = self.options.get("dropout", 0.0) if self.name == "mlp" else 0.0
        if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
            raise ValueError(f"model 'mlp' option dropout must be a number in [0, 1), got {dropout!r}")


class DPSGD(Strict):
    """Local DP-SGD (Abadi et al., CCS 2016) with Opacus: every example's gradient is
    clipped and Gaussian noise is added inside the participant, so its update is
    differentially private before it leaves the silo, whoever runs the driver."""

    noise_multiplier: float = Field(
        ..., ge=0, description="noise std on each step's summed gradients = multiplier * max_grad_norm"
    )
    max_grad_norm: float = Field(..., gt=0, description="each example's gradient is clipped to this L2 norm")
    delta: float = Field(1e-5, gt=0, lt=1, description="the delta that epsilon is reported for; "
                         "keep it below 1 / local examples")
    max_epsilon: float | None = Field(
        None, gt=0, description="the silo's budget: it refuses any task that would take its epsilon "
        "past this, and leaves the run")


class TrainSpec(Strict):
    local_epochs: int = Field(1, ge=1)
    local_steps: int | None = Field(None, ge=1, description="if set, overrides local_epochs")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.05, gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    dp_sgd: DPSGD | None = Field(None, description="train with local DP-SGD (weight/delta strategies only)")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: forward passes under bfloat16 autocast (weights and optimizer "
        "state stay fp32); on GPUs with bf16 units, faster and lighter")

    @model_validator(mode="after")
    def _precision_fits(self) -> TrainSpec:
        if self.precision == "bf16" and self.dp_sgd is not None:
            raise ValueError("precision bf16 is not supported with dp_sgd (Opacus' per-example "
                             "gradients are computed in fp32); use precision: fp32")
        return self
