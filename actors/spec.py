"""Typed description of one participant: what it loads, builds and how it trains.

These pydantic models are the participant-side half of the run config. The orchestrator's
config composes them (so YAML is validated in one place, before Ray starts) and hands each
actor its own :class:`ParticipantSpec`; the actor never sees a raw dict.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator


class Strict(BaseModel):
    """Unknown keys are errors: a typo in YAML must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PartitionSpec(Strict):
    kind: Literal["iid", "dirichlet", "shards"] = "dirichlet"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration; small = skewed")
    shards_per_participant: int = Field(2, ge=1)
    min_size: int = Field(10, ge=1)


class DatasetSpec(Strict):
    """A benchmark dataset: shared out by a partitioner, or generated per participant.

    ``digits`` is scikit-learn's bundled 8x8 handwritten digits, so it works offline; a
    partitioner splits it. ``table`` is one pooled CSV/Parquet table (``path``) split
    into simulated sites by the same partitioners, its test split held out first. ``synthetic`` is Synthetic(alpha, beta) of the FedProx paper
    (:mod:`actors.data.synthetic`): each participant generates its own task and data inside its
    actor, keeps ``test_fraction`` of its rows as its own test split, and the driver
    evaluates on the pooled test splits of the first ``eval_participants`` participants.
    """

    name: Literal["digits", "synthetic", "table"] = "digits"
    path: str | None = Field(None, description="table: the pooled CSV/Parquet table to split into sites")
    label_column: str | list[str] = Field("label", description="table: the target column(s)")
    feature_columns: list[str] | None = Field(None, description="table: default every other column")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    partition: PartitionSpec = PartitionSpec()
    seed: int = Field(0, ge=0)
    public_size: int = Field(
        0, ge=0, description="training examples held out of the partition as the unlabelled "
        "public set that soft-label strategies (FedMD, FedDF, DS-FL) predict on",
    )
    # synthetic only (defaults: the paper's); a non-default value with digits is an error
    alpha: float = Field(1.0, ge=0, description="synthetic: how far participants' models differ")
    beta: float = Field(1.0, ge=0, description="synthetic: how far participants' inputs differ")
    num_features: int = Field(60, ge=1, description="synthetic: input dimension")
    num_classes: int = Field(10, ge=2, description="synthetic: label space")
    size_mu: float = Field(4.0, description="synthetic: sizes are min_size + LogNormal(size_mu, size_sigma)")
    size_sigma: float = Field(2.0, ge=0, description="synthetic: spread of the sizes' power law")
    min_size: int = Field(50, ge=2, description="synthetic: fewest rows a participant has")
    max_size: int | None = Field(10_000, ge=2, description="synthetic: most rows (None: no cap)")
    eval_participants: int = Field(
        100, ge=1, description="synthetic: the driver's test set pools the test splits of the "
        "first this many participants (all of them in a smaller run)",
    )

    @model_validator(mode="after")
    def _settings_fit_the_dataset(self) -> DatasetSpec:
        defaults = DatasetSpec.model_fields
        table_set = [f for f in TABLE_FIELDS if getattr(self, f) != defaults[f].default]
        if self.name != "table" and table_set:
            raise ValueError(f"{', '.join(table_set)}: table settings, not used by name: {self.name}")
        if self.name == "table" and self.path is None:
            raise ValueError("name: table needs path: the pooled CSV/Parquet table")
        if self.name in ("digits", "table"):
            stray = [f for f in SYNTHETIC_FIELDS if getattr(self, f) != defaults[f].default]
            if stray:
                raise ValueError(f"{', '.join(stray)}: synthetic settings, not used by name: {self.name}")
            return self
        if self.partition != PartitionSpec():
            raise ValueError(
                "partition does not apply to name: synthetic: each participant generates data "
                "from its own distribution (its skew comes from alpha and beta)")
        if self.public_size:
            raise ValueError("public_size is not available with name: synthetic (it has no shared pool)")
        if self.max_size is not None and self.max_size < self.min_size:
            raise ValueError(f"max_size={self.max_size} is below min_size={self.min_size}")
        return self


SYNTHETIC_FIELDS = ("alpha", "beta", "num_features", "num_classes", "size_mu", "size_sigma",
                    "min_size", "max_size", "eval_participants")
"""The :class:`DatasetSpec` fields only ``name: synthetic`` reads."""

TABLE_FIELDS = ("path", "label_column", "feature_columns")
"""The :class:`DatasetSpec` fields only ``name: table`` reads."""

METRICS: dict[str, dict[str, bool]] = {
    "classification": {"accuracy": True, "macro_f1": True, "auroc": True, "loss": False},
    "regression": {"r2": True, "mse": False, "mae": False, "loss": False},
}
"""Each task's evaluation metrics, and whether higher is better. ``auroc`` exists for
two classes only; ``loss`` is the training loss on the test set."""

LOWER_IS_BETTER = frozenset(m for kind in METRICS.values() for m, higher in kind.items() if not higher)

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


class PreprocessSpec(Strict):
    """Federated preprocessing of table features, fitted on global statistics.

    Each site sends counts, sums and sums of squares per numeric column and the set of
    values of each categorical column; the driver combines them into one transform that
    every site (and the evaluation table) applies. No site could fit it alone: its own
    statistics differ from the others'.
    """

    standardize: bool = Field(True, description="numeric features to zero mean and unit variance")
    impute: Literal["mean", "refuse"] = Field(
        "refuse", description="mean: a missing numeric value becomes the global mean (and a "
        "missing category its own 'missing' value); refuse: missing values are an error")
    categorical: list[str] = Field(
        default_factory=list, description="columns one-hot encoded over the union of the sites' values")
    standardize_target: bool | None = Field(
        None, description="regression: train on targets scaled to zero mean, unit variance "
        "(a flow of 3,000 vehicles/hour is no target for SGD); mse and mae are still reported in "
        "the target's own units. Default: as `standardize` for task: regression")


View = Literal["flat", "image", "sequence"]


class PartitionData(Strict):
    """This participant's shard of the run's shared ``dataset``."""

    source: Literal["partition"] = "partition"
    view: View = Field("flat", description="flat vectors, (C,H,W) images or (rows, features) sequences")
    test_fraction: float = Field(
        0.0, ge=0, lt=1, description="rows of this participant's shard held out as its own test "
        "split (how personalised models are judged); 0 evaluates on the dataset's test split")


class SiteData(Strict):
    """What every source a site owns shares: its label space, its own held-out rows, and
    how its features are shaped for the model."""

    num_classes: int | None = Field(
        None, ge=2, description="size of the label space shared by all (classification; "
        "regression takes its outputs from the target columns)")
    test_fraction: float = Field(0.0, ge=0, lt=1, description="rows held out as the site's own test split")
    image_shape: tuple[int, int, int] | None = None
    view: View = "flat"

    @model_validator(mode="after")
    def _view_needs_shape(self) -> SiteData:
        if self.view != "flat" and self.image_shape is None:
            raise ValueError(f"view {self.view!r} needs image_shape: [C, H, W]")
        return self


class SiteFiles(SiteData):
    """``path`` may contain ``{index}`` (index within the group), ``{name}`` (participant
    name) and ``{group}``, or ``paths`` lists one per participant of the group."""

    path: str | None = None
    paths: list[str] | None = None

    @model_validator(mode="after")
    def _one_path(self) -> SiteFiles:
        if (self.path is None) == (self.paths is None):
            raise ValueError("give exactly one of 'path' (a template) or 'paths' (a list)")
        return self

    def path_for(self, index: int, name: str, group: str) -> str:
        if self.paths is not None:
            return self.paths[index]
        assert self.path is not None
        return self.path.format(index=index, name=name, group=group)


class TableColumns(Strict):
    """Which columns of a table are the target and which the features."""

    label_column: str | list[str] = Field(
        "label", description="the target column; a list of columns is a vector target (regression)")
    feature_columns: list[str] | None = Field(None, description="default: every other column")

    @property
    def label_columns(self) -> list[str]:
        return [self.label_column] if isinstance(self.label_column, str) else list(self.label_column)


class FileData(SiteFiles, TableColumns):
    """A participant's own table (CSV or Parquet): the cross-silo case."""

    source: Literal["file"]


class PythonData(SiteData):
    """A participant's own loader: ``factory`` is ``"package.module:function"``, called
    inside the participant as ``function(name=..., index=..., group=..., **options)``.

    It returns ``(x, y)``, ``(x_train, y_train, x_test, y_test)``, or a torch ``Dataset``
    of ``(x, y)`` pairs. A database, an image store, a site's own reader: anything the
    site's node can read.
    """

    source: Literal["python"]
    factory: str = Field(..., pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory")

    @model_validator(mode="after")
    def _loader_accepts(self) -> PythonData:
        """Import the loader and check ``options`` against its signature now, not inside
        every participant after Ray started."""
        from actors.data.loaders import check_loader

        check_loader(self.factory, self.options)
        return self


class ImageData(SiteFiles):
    """A site's image folder in the common layout: one subfolder per class
    (``root/cat/001.png``). Images are resized to ``image_shape`` (C = 1 greyscale,
    3 RGB) and scaled to [0, 1]; reading them needs Pillow (``pip install fedray[images]``)."""

    source: Literal["images"]
    image_shape: tuple[int, int, int]
    view: View = "image"
    classes: list[str] | None = Field(
        None, description="class names in label order, the same at every site (default: the "
        "sorted subfolder names, which must then be the same at every site)")


DataSpec = Annotated[PartitionData | FileData | PythonData | ImageData, Field(discriminator="source")]


BUILTIN_MODEL_OPTIONS: dict[str, frozenset[str]] = {
    "mlp": frozenset({"hidden", "dropout"}),
    "cnn": frozenset({"channels", "hidden"}),
    "gru": frozenset({"hidden", "layers"}),
    "lstm": frozenset({"hidden", "layers"}),
    "transformer": frozenset({"dim", "heads", "layers"}),
}
"""Options of the built-in factories in :mod:`actors.training.models`, stated here so validating a
config does not import torch (seconds); a test keeps it equal to the factories' signatures."""


class ModelSpec(BaseModel):
    """``name`` plus the factory's own keyword options, checked against its signature."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = "mlp"

    @model_validator(mode="after")
    def _known(self) -> ModelSpec:
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
        return self

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


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


class SpeedDistribution(Strict):
    """Per-participant speeds drawn once at start-up, then divided by the group's
    fastest so the fastest runs at real speed and the rest are slower.

    ``lognormal``: exp(N(0, sigma)); ``exponential``: Exp(1); ``pareto``: 1 + Pareto(shape).
    Speeds are the reciprocal of the drawn slowdown.
    """

    kind: Literal["lognormal", "exponential", "pareto"]
    sigma: float = Field(1.0, gt=0)
    shape: float = Field(1.5, gt=0)
    seed: int = 0


class Availability(Strict):
    """Participant is online for ``on_s`` seconds, offline for ``off_s``, repeating;
    ``phase_s`` shifts its cycle (default: a seeded random phase per participant)."""

    on_s: float = Field(..., gt=0)
    off_s: float = Field(..., ge=0)
    phase_s: float | None = None

    @property
    def period_s(self) -> float:
        return self.on_s + self.off_s


class Windows(Strict):
    """Online during explicit windows ``[start_s, end_s)`` of a ``period_s``-second cycle
    that repeats, so a long run never runs out of trace: what a device trace gives each
    participant (:mod:`orchestrator.cluster.traces`), or written by hand. Windows are sorted, disjoint
    and inside the cycle; there is no random phase (a trace is a timeline from t=0)."""

    windows: tuple[tuple[float, float], ...] = Field(..., min_length=1, description="[[start_s, end_s], ...]")
    period_s: float = Field(..., gt=0, description="the cycle the windows repeat with")
    phase_s: float = Field(0.0, description="shifts the cycle, as Availability.phase_s")

    @model_validator(mode="after")
    def _disjoint_in_cycle(self) -> Windows:
        previous_end = 0.0
        for i, (start, end) in enumerate(self.windows):
            if not previous_end <= start < end <= self.period_s:
                raise ValueError(
                    f"windows[{i}] = [{start:g}, {end:g}]: windows must be sorted, disjoint, each "
                    f"start < end, within [0, period_s={self.period_s:g}]")
            previous_end = end
        return self


def _availability_kind(value: Any) -> str:
    """The union tag: explicit ``windows``, else the periodic on/off model."""
    if isinstance(value, Windows) or (isinstance(value, dict) and "windows" in value):
        return "windows"
    return "periodic"


AvailabilityModel = Annotated[
    Annotated[Availability, Tag("periodic")] | Annotated[Windows, Tag("windows")],
    Discriminator(_availability_kind),
]
"""``availability:``: ``{on_s, off_s, phase_s}`` or ``{windows, period_s}``."""


class TraceSpec(Strict):
    """Per-participant device traces: a table giving each participant its speed, its
    bandwidth and (in a second table) its online windows; the format is documented in
    :mod:`orchestrator.cluster.traces`. Relative paths are relative to the driver's working directory."""

    path: str = Field(..., min_length=1, description="the fleet table (CSV or Parquet), one row per "
                      "participant; with format: fedscale, FedScale's client_device_capacity pickle")
    windows: str | None = Field(
        None, description="online windows (CSV or Parquet: participant, start_s, end_s); with format: "
        "fedscale, FedScale's client_behave_trace pickle. None: the group's availability applies")
    format: Literal["table", "fedscale"] = "table"
    speed_unit: Literal["relative", "samples_per_s", "seconds_per_sample"] = Field(
        "relative", description="the speed column: relative in (0, 1], or absolute (normalised to "
        "the group's fastest = 1, whose seconds per sample become simulated_seconds_per_sample)")
    period_s: float | None = Field(None, gt=0, description="the windows' cycle, for a fleet table "
                                   "without a period_s column (default: the latest end_s)")
    seed: int | None = Field(None, description="fedscale: sample the group's clients with this "
                             "seed (default: the first clients in the files)")

    @model_validator(mode="after")
    def _fits_format(self) -> TraceSpec:
        if self.format == "fedscale" and self.speed_unit != "relative":
            raise ValueError("speed_unit does not apply to format: fedscale (its computation is "
                             "milliseconds per sample)")
        if self.format == "table" and self.seed is not None:
            raise ValueError("seed applies to format: fedscale (a table's rows are matched in order)")
        if self.period_s is not None and self.windows is None:
            raise ValueError("period_s is the windows' cycle: give windows too")
        return self

    @property
    def absolute(self) -> bool:
        """Whether the trace says how many seconds a sample takes (not only relative speeds)."""
        return self.format == "fedscale" or self.speed_unit != "relative"


class AttackSpec(Strict):
    """A Byzantine participant, to test robust strategies: applied inside the
    participant to its own payload. ``sign_flip``: send ``-scale * payload``;
    ``noise``: send Gaussian noise with standard deviation ``scale``."""

    kind: Literal["sign_flip", "noise"] = "sign_flip"
    scale: float = Field(10.0, gt=0)


class SystemSpec(Strict):
    """Simulated heterogeneity, applied inside the participant around real training.

    ``speed`` < 1 stretches each task to ``real_seconds / speed``;
    ``simulated_seconds_per_sample`` instead makes a task last exactly
    ``samples / speed * simulated_seconds_per_sample`` (when that exceeds the real time),
    independent of how loaded the machine is.
    """

    speed: float | SpeedDistribution = Field(1.0, description="relative speed, 1 = real")
    simulated_seconds_per_sample: float | None = Field(None, gt=0)
    bandwidth_mbps: float | None = Field(
        None, gt=0, description="link speed: each task also lasts 2 x model bytes / bandwidth "
        "(the global state down, the update up)",
    )
    dropout_prob: float = Field(0.0, ge=0, le=1)
    hang_prob: float = Field(
        0.0, ge=0, le=1, description="fault injection: chance a task hangs until the "
        "driver's schedule.task_timeout_s kills it",
    )
    availability: AvailabilityModel | None = None
    attack: AttackSpec | None = Field(None, description="make this group Byzantine")
    trace: TraceSpec | None = Field(
        None, description="per-participant speed, bandwidth and online windows from a device "
        "trace (orchestrator/cluster/traces.py); they replace speed, bandwidth_mbps and availability")

    @model_validator(mode="after")
    def _speed_range(self) -> SystemSpec:
        if isinstance(self.speed, float) and not 0 < self.speed <= 1:
            raise ValueError("speed must be in (0, 1]: 1 is real speed, 0.1 ten times slower")
        if self.trace is not None and self.speed != 1.0:
            raise ValueError("speed: the trace gives each participant its speed; drop speed or trace")
        if self.trace is not None and self.trace.windows is not None and self.availability is not None:
            raise ValueError("availability: the trace's windows give each participant its "
                             "availability; drop availability or trace.windows")
        return self


class FittedTransform(Strict):
    """The preprocessing fitted on every site's statistics (``orchestrator/server/preprocessing.py``):
    what each site and the evaluation table apply to their raw columns, in this order
    (numeric columns, then each categorical column's one-hot block)."""

    numeric: list[str]
    means: list[float]
    stds: list[float]
    categories: dict[str, list[str]] = Field(default_factory=dict)
    standardize: bool = True
    impute: Literal["mean", "refuse"] = "refuse"
    rows: int = Field(0, description="rows across the sites the statistics came from")
    target_means: list[float] = Field(default_factory=list, description="standardize_target: per target column")
    target_stds: list[float] = Field(default_factory=list)

    def scale_targets(self, y: np.ndarray) -> np.ndarray:
        """Regression targets as the model learns them (standardized when fitted so)."""
        if not self.target_stds:
            return y
        return ((y.reshape(len(y), -1) - np.asarray(self.target_means)) / np.asarray(self.target_stds)
                ).reshape(y.shape).astype(np.float32)

    @property
    def output_columns(self) -> list[str]:
        return [*self.numeric, *(f"{c}={v}" for c, values in self.categories.items() for v in values)]


MISSING_CATEGORY = "<missing>"
"""The category a missing categorical value becomes under ``impute: mean``."""


class ParticipantSpec(Strict):
    """Everything one actor needs to load its data and build its model by itself."""

    name: str
    group: str
    index_in_group: int
    seed: int
    model: ModelSpec
    data: DataSpec
    train: TrainSpec
    dataset: DatasetSpec | None = None
    partition_index: int | None = None
    num_partitions: int = 0
    num_threads: int = 1
    num_gpus: float = Field(0.0, description="its share of a GPU: its memory cap by default")
    gpu_memory_gb: float | None = None
    speed: float = 1.0
    system: SystemSpec = SystemSpec()
    task: TaskSpec = TaskSpec()
    preprocess: PreprocessSpec | None = None
    transform: FittedTransform | None = Field(None, description="set by the driver once fitted")
    strategy: str = Field("fedavg", description="the run's strategy: its client half runs here")
    strategy_options: dict[str, Any] = Field(default_factory=dict)
    state_dir: str | None = Field(
        None, description="private state kept on the participant's own node (relative: "
        "under that node's temp dir); a restarted actor reloads it",
    )
