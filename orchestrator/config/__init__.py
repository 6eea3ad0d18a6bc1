"""The run configuration: typed, validated once, before Ray starts.

A YAML file maps onto :class:`RunConfig`. Participant-side pieces (model, data, training,
simulated system) come from :mod:`actors.spec`; strategy hyperparameters are each
strategy's own ``Params`` dataclass. Every mistake becomes a :class:`ConfigError` whose
message names the field path and what is allowed, never a traceback.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from actors.spec import (
    Availability,
    DatasetSpec,
    DataSpec,
    FileData,
    ImageData,
    ModelSpec,
    PartitionData,
    PreprocessSpec,
    PythonData,
    Strict,
    SystemSpec,
    TaskSpec,
    TrainSpec,
    Windows,
)
from orchestrator.loop.schedules import Async, Buffered, SchedulePolicy, SyncRounds
from strategies import Strategy, build_strategy, get_strategy_class, names_where
from strategies.staleness import StalenessFunction


class ConfigError(ValueError):
    """A user mistake in the configuration; the message is meant to be printed as is."""


class Resources(Strict):
    """Ray actor options for each participant of a group."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0, description="fractions share one GPU")
    memory: int | None = Field(None, gt=0, description="bytes reserved for the actor")
    gpu_memory_gb: float | None = Field(
        None, gt=0, description="hard cap on the participant's GPU memory (default: its num_gpus "
        "share of the card); an allocation past it fails that participant alone")
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources")
    max_restarts: int = Field(0, ge=-1, description="Ray restarts of a crashed actor (-1: forever)")

    @model_validator(mode="after")
    def _whole_gpus(self) -> Resources:
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise ValueError("num_gpus above 1 must be a whole number")
        if self.gpu_memory_gb is not None and self.num_gpus == 0:
            raise ValueError("gpu_memory_gb caps GPU memory: it needs num_gpus > 0")
        return self


class NodePlacement(Strict):
    """Pin a group to nodes offering custom resource ``node`` (or label ``key=value``)."""

    node: str = Field(..., min_length=1, description="custom resource name, or node label key=value")


class PlacementGroupOption(Strict):
    """One Ray placement group per group, one bundle per participant."""

    placement_group: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    timeout_s: float = Field(60.0, gt=0, description="give up if Ray cannot reserve it in time")


Placement = Literal["default", "spread", "pack"] | NodePlacement | PlacementGroupOption
"""Where a group's actors go: Ray's default, SPREAD over nodes, packed into one placement
group, pinned to a node, or a placement group with an explicit strategy."""


class Group(Strict):
    """``count`` participants sharing a model, data source, resources and training."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    count: int = Field(1, ge=1)
    model: ModelSpec = ModelSpec()
    data: DataSpec = PartitionData()
    train: TrainSpec = TrainSpec()
    resources: Resources = Resources()
    placement: Placement = "default"
    system: SystemSpec = SystemSpec()
    join_at: int = Field(
        0, ge=0, description="no task before this global version; the first task "
        "warm-starts from the global state then (a participant that joins late)",
    )
    hosting: Literal["auto", "dedicated", "pool"] = Field(
        "auto", description="dedicated: one actor per participant, pinned with its resources "
        "(a silo's own process); pool: `workers` actors serve the group's participants in turn "
        "(a simulation: start-up and memory grow with the workers, not the participants); "
        "auto: dedicated while the run's actors fit the machine or cluster (CPUs, GPUs, memory), "
        "else a pool, decided before the participants start (orchestrator/cluster/preflight.py)",
    )
    workers: int | None = Field(
        None, ge=1, description="pool size under hosting: pool (setting it means a pool), each "
        "worker with the group's resources; default: as many as this machine has cores, at most "
        "one per participant",
    )
    cache_size: int = Field(
        64, ge=1, description="participants a pool worker keeps set up in memory; the rest are "
        "set up again (data, model, private state from its state directory) when next served",
    )
    cache_mb: float | None = Field(
        None, gt=0, description="also bound what those participants hold (their data, and "
        "their models about three times over) to this many MiB per worker",
    )

    batched: bool | Literal["auto"] = Field(
        "auto", description="pool workers train the tasks they have at once together, as one "
        "batched computation where the local step allows it (actors/participant/cohort.py); auto: on GPU "
        "workers (num_gpus > 0)")

    @model_validator(mode="before")
    @classmethod
    def _workers_mean_pool(cls, data: Any) -> Any:
        """Setting ``workers``, or ``batched: true``, asks for a pool: under ``hosting: auto``
        it is one (else pre-flight could make the group dedicated and batching would not happen)."""
        if not isinstance(data, dict) or data.get("hosting", "auto") != "auto":
            return data
        if data.get("workers") is not None or data.get("batched") is True:
            return {**data, "hosting": "pool"}
        return data

    @model_validator(mode="after")
    def _pool_settings(self) -> Group:
        if self.hosting == "dedicated" and self.workers is not None:
            raise ValueError("workers is a pool setting: set hosting: pool (or auto), or drop workers")
        if self.hosting == "dedicated" and self.batched is True:
            raise ValueError("batched: true trains a pool worker's participants together; a dedicated "
                             "participant trains alone: set hosting: pool, or drop batched")
        if self.workers is not None and self.workers > self.count:
            raise ValueError(f"workers={self.workers} exceeds the group's {self.count} participants")
        if self.hosting == "pool" and (self.placement == "pack" or isinstance(self.placement, PlacementGroupOption)):
            shown = repr(self.placement) if isinstance(self.placement, str) else "{placement_group: ...}"
            raise ValueError(
                f"placement {shown} reserves a placement-group bundle per participant, which needs "
                "hosting: dedicated (or auto); a pool takes placement 'default', 'spread' or {node: NAME}")
        if self.hosting == "pool" and self.resources.max_restarts > 0:
            raise ValueError(
                f"resources.max_restarts={self.resources.max_restarts} applies to dedicated actors; pool "
                "workers are always restarted (their participants' state is on disk): drop it, or set "
                "hosting: dedicated (or auto)")
        return self

    @property
    def batches(self) -> bool:
        """Whether this group's pool workers train their tasks together."""
        if self.hosting != "pool":
            return False
        return self.resources.num_gpus > 0 if self.batched == "auto" else bool(self.batched)

    @property
    def pool_size(self) -> int:
        """How many pool workers serve this group (under ``hosting: pool``)."""
        return self.workers or max(1, min(self.count, os.cpu_count() or 1))


class StrategyConfig(BaseModel):
    """``name`` plus that strategy's hyperparameters, checked against its ``Params``."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = "fedavg"

    @model_validator(mode="after")
    def _known(self) -> StrategyConfig:
        try:
            build_strategy(self.name, self.options)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        except ValidationError as exc:
            raise ValueError(
                _flatten_errors(exc, prefix=f"strategy {self.name!r} option ").strip()
            ) from None
        return self

    @property
    def options(self) -> dict[str, Any]:
        """The strategy's hyperparameters as written (its ``Params`` fields)."""
        return dict(self.model_extra or {})

    @property
    def cls(self) -> type[Strategy]:
        """The strategy class, whose declared capabilities the checks below read."""
        return get_strategy_class(self.name)

    def build(self) -> Strategy:
        """A fresh strategy instance with its validated hyperparameters."""
        return build_strategy(self.name, self.options)


class Staleness(Strict):
    kind: Literal["constant", "polynomial", "hinge"] = "polynomial"
    a: float = Field(0.5, ge=0)
    b: int = Field(4, ge=0)

    def function(self) -> StalenessFunction:
        return StalenessFunction(self.kind, self.a, self.b)


class ScheduleBase(Strict):
    """*When* to aggregate: what every mode shares. One subclass per ``mode``, so a setting
    of another mode is an error instead of being silently ignored. See
    ``orchestrator/loop/schedules.py`` for the three modes."""

    policy: ClassVar[type[SchedulePolicy]]
    """The policy class that runs this mode; its capabilities drive the config checks."""

    mode: str = Field(..., description="the union tag; each subclass narrows it to one mode")
    # staleness discount: every buffered/async update, and sync's carried late updates
    staleness: Staleness = Staleness()
    max_staleness: int | None = Field(None, ge=0, description="older updates are dropped")
    # adaptive local work: slow participants do fewer local steps
    adaptive_local_work: bool = Field(
        False, description="scale each participant's local steps by its measured samples/s"
    )
    # failures
    task_timeout_s: float | None = Field(None, gt=0)
    max_failures: int = Field(3, ge=1, description="consecutive failures before a participant is dropped")
    min_participants: int = Field(1, ge=1)


class SyncSchedule(ScheduleBase):
    """Rounds, with over-selection, a deadline, and late updates dropped or carried."""

    policy: ClassVar[type[SchedulePolicy]] = SyncRounds
    mode: Literal["sync"] = "sync"
    clients_per_round: int | None = Field(None, ge=1, description="default: all")
    over_select: float = Field(0.0, ge=0, description="extra fraction dispatched per round")
    deadline_s: float | None = Field(None, gt=0)
    late_updates: Literal["drop", "carry"] = "drop"


class BufferedSchedule(ScheduleBase):
    """FedBuff: keep ``concurrency`` participants busy, aggregate every ``buffer_size``."""

    policy: ClassVar[type[SchedulePolicy]] = Buffered
    mode: Literal["buffered"] = "buffered"
    concurrency: int | None = Field(None, ge=1, description="participants kept busy; default: all")
    buffer_size: int = Field(4, ge=1)


class AsyncSchedule(ScheduleBase):
    """FedAsync: every update is its own aggregation, mixed in with weight ``alpha``."""

    policy: ClassVar[type[SchedulePolicy]] = Async
    mode: Literal["async"] = "async"
    concurrency: int | None = Field(None, ge=1, description="participants kept busy; default: all")
    alpha: float = Field(0.6, gt=0, le=1, description="FedAsync mixing weight")


_SCHEDULE_MODES: dict[str, type[ScheduleBase]] = {
    "sync": SyncSchedule, "buffered": BufferedSchedule, "async": AsyncSchedule,
}


def _schedule_mode(value: Any) -> str:
    """The union tag: ``mode`` as written, ``sync`` when omitted. Anything but a mapping
    goes to sync, whose own validation then says what was expected."""
    if isinstance(value, ScheduleBase):
        return value.mode
    if isinstance(value, dict) and "mode" in value:
        mode = value["mode"]
        return mode if isinstance(mode, str) else repr(mode)  # an unknown tag either way
    return "sync"


Schedule = Annotated[
    Annotated[SyncSchedule, Tag("sync")]
    | Annotated[BufferedSchedule, Tag("buffered")]
    | Annotated[AsyncSchedule, Tag("async")],
    Discriminator(_schedule_mode),
]
"""``schedule:``, one model per ``mode`` (default ``sync``)."""


class Stop(Strict):
    max_aggregations: int | None = Field(50, ge=1)
    max_updates: int | None = Field(None, ge=1)
    max_wall_s: float | None = Field(None, gt=0)
    target_accuracy: float | None = Field(None, gt=0, le=1, description="short for target on accuracy")
    target: float | None = Field(
        None, description="stop once the task's metric (task.metric: accuracy, r2, mse, ...) "
        "reaches this value: at least it, or at most it for an error such as mse")

    @model_validator(mode="after")
    def _some_limit(self) -> Stop:
        if self.target is not None and self.target_accuracy is not None:
            raise ValueError("give target (for task.metric) or target_accuracy, not both")
        if self.max_aggregations is None and self.max_updates is None and self.max_wall_s is None:
            raise ValueError("set at least one of max_aggregations, max_updates, max_wall_s")
        return self


class Evaluation(Strict):
    """Server-side evaluation of the global model on a held-out set."""

    every: int = Field(1, ge=1, description="evaluate after every N aggregations")
    path: str | None = Field(None, description="CSV/Parquet test table; default: the dataset's test split")
    label_column: str | list[str] = Field("label", description="its target column(s)")
    batch_size: int = Field(1024, ge=1)


class UpdatePolicy(Strict):
    """Hygiene applied to every arriving update before any strategy sees it."""

    clip_norm: float | None = Field(None, gt=0, description="scale updates down to this L2 norm")


class CheckpointPolicy(Strict):
    """Periodic checkpoints of the driver's state (``orchestrator/loop/checkpoint.py``)."""

    every: int | None = Field(None, ge=1, description="checkpoint after every N aggregations; None: never")
    keep: int = Field(2, ge=1, description="how many recent checkpoints to keep")
    participant_dir: str | None = Field(
        None, description="participants' private state on their own node ({run_id}, {name} "
        "are filled in); default: <node temp dir>/fedray-state/{run_id}/{name}",
    )


class DifferentialPrivacy(Strict):
    """Participant-level DP-FedAvg (McMahan et al., ICLR 2018)."""

    clip_norm: float = Field(..., gt=0, description="each update is clipped to this L2 norm")
    noise_multiplier: float = Field(..., ge=0, description="noise std on the sum = multiplier * clip_norm")
    delta: float = Field(1e-5, gt=0, lt=1, description="the delta that epsilon is reported for")


class Privacy(Strict):
    """What the driver may learn about any one participant's update."""

    secure_aggregation: bool = Field(False, description="pairwise-masked updates; the driver sees only their sum")
    min_cohort: int = Field(
        2, ge=1, description="fewest distinct participants whose masked sum the driver may decode "
        "(the sum of one is its update); smaller cohorts wait for more updates or are aborted")
    dp: DifferentialPrivacy | None = None


class Logging(Strict):
    """Optional extra logging of the run's progress scalars."""

    tensorboard: str | None = Field(None, description="directory for TensorBoard event files (via tensorboardX)")


class RayOptions(Strict):
    address: str | None = Field(None, description="None starts a local Ray; 'auto' or ray://host:port joins one")
    num_cpus: float | None = Field(None, gt=0, description="logical CPUs for a local Ray; default: enough for every participant")
    num_gpus: float | None = Field(None, ge=0)


class RunConfig(Strict):
    name: str = "fedray"
    seed: int = 0
    clock: Literal["wall", "simulated"] = Field(
        "wall", description="wall: tasks last as long as they really take (deployments); "
        "simulated: each task lasts what the system model says, and results are handled in "
        "simulated-time order, so a run is the same on any machine (simulations)",
    )
    task: TaskSpec = Field(TaskSpec(), description="classification or regression; its loss and headline metric")
    preprocess: PreprocessSpec | None = Field(
        None, description="federated preprocessing of table features (orchestrator/server/preprocessing.py)")
    dataset: DatasetSpec | None = None
    groups: list[Group] = Field(..., min_length=1)
    strategy: StrategyConfig = StrategyConfig()
    schedule: Schedule = SyncSchedule()
    stop: Stop = Stop()
    evaluation: Evaluation = Evaluation()
    updates: UpdatePolicy = UpdatePolicy()
    ray: RayOptions = RayOptions()
    checkpoint: CheckpointPolicy = CheckpointPolicy()
    privacy: Privacy = Privacy()
    logging: Logging = Logging()

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        names = [g.name for g in self.groups]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"group names must be unique; repeated: {dupes}")
        if self.dataset is None and any(isinstance(g.data, PartitionData) for g in self.groups):
            raise ValueError("groups with data source 'partition' need a top-level 'dataset'")
        total = self.num_participants
        if (isinstance(self.schedule, SyncSchedule) and self.schedule.clients_per_round
                and self.schedule.clients_per_round > total):
            raise ValueError(
                f"schedule.clients_per_round={self.schedule.clients_per_round} exceeds the "
                f"{total} participants"
            )
        if self.schedule.min_participants > total:
            raise ValueError(f"schedule.min_participants exceeds the {total} participants")
        self._check_privacy()
        if self.evaluation.path is None and self.dataset is None:
            raise ValueError(
                "evaluation needs a test set: give evaluation.path, or a top-level 'dataset'"
            )
        self._check_heterogeneous()
        self._check_dp_sgd()
        self._check_clock()
        self._check_synthetic()
        self._check_task()
        self._check_preprocess()
        return self

    def _check_task(self) -> None:
        """Each data source states its label space for classification and none for
        regression; soft labels and the built-in datasets are classification only."""
        task = self.task.kind
        if task == "regression":
            if self.dataset is not None and self.dataset.name != "table":
                raise ValueError(f"task: regression needs table data; dataset {self.dataset.name!r} is classification")
            if self.strategy.cls.needs_public_set:
                raise ValueError(
                    f"strategy {self.strategy.name!r} exchanges soft labels (class probabilities), which "
                    "regression does not have; use a weight strategy (fedavg, fedper, fedrep, ...)")
            if self.stop.target_accuracy is not None:
                raise ValueError("stop.target_accuracy: regression has no accuracy; use stop.target with task.metric")
        for i, group in enumerate(self.groups):
            data = group.data
            if isinstance(data, PartitionData):
                continue
            if task == "classification" and data.num_classes is None and not (
                    isinstance(data, ImageData) and data.classes):
                raise ValueError(f"groups[{i}].data.num_classes: required for classification")
            if task == "regression" and data.num_classes is not None:
                raise ValueError(f"groups[{i}].data.num_classes: regression has no classes; drop it")
            if task == "regression" and isinstance(data, ImageData):
                raise ValueError(f"groups[{i}].data: source images labels images by class folder; "
                                 "it needs task: classification")

    def _check_preprocess(self) -> None:
        """Preprocessing fits columns of tables: every group's data must be one."""
        if self.preprocess is None:
            return
        if self.preprocess.standardize_target is True and self.task.kind != "regression":
            raise ValueError("preprocess.standardize_target: class labels are not scaled; it is for task: regression")
        for i, group in enumerate(self.groups):
            tabular = isinstance(group.data, FileData) or (
                isinstance(group.data, PartitionData) and self.dataset is not None and self.dataset.name == "table")
            if not tabular:
                raise ValueError(
                    f"groups[{i}].data: preprocess applies to tables (source: file, or dataset name: "
                    f"table); source {group.data.source!r} here gives arrays")
            if group.data.view != "flat":
                raise ValueError(f"groups[{i}].data.view: preprocessed tables are flat feature vectors")

    @property
    def num_partitions(self) -> int:
        """Participants drawing a shard of the run's dataset (the parts it is split into)."""
        return sum(g.count for g in self.groups if isinstance(g.data, PartitionData))

    @property
    def standardizes_target(self) -> bool:
        """Whether regression targets are fitted and trained standardized: by default
        whenever the features are, since raw targets (25 to 346) make SGD diverge."""
        p = self.preprocess
        if p is None or self.task.kind != "regression":
            return False
        return p.standardize if p.standardize_target is None else p.standardize_target

    @property
    def target(self) -> tuple[str, float] | None:
        """The stop target as (metric, value), or None."""
        if self.stop.target_accuracy is not None:
            return "accuracy", self.stop.target_accuracy
        return None if self.stop.target is None else (self.task.metric_name, self.stop.target)

    def _check_synthetic(self) -> None:
        """Synthetic participants draw flat feature vectors, and their test split is fixed
        by dataset.test_fraction: the driver's test set pools exactly those rows."""
        if self.dataset is None or self.dataset.name != "synthetic":
            return
        for i, group in enumerate(self.groups):
            if not isinstance(group.data, PartitionData):
                continue
            if group.data.view != "flat":
                raise ValueError(
                    f"groups[{i}].data.view: synthetic features are flat vectors, not {group.data.view!r}")
            if group.data.test_fraction:
                raise ValueError(
                    f"groups[{i}].data.test_fraction: synthetic participants already hold out "
                    "dataset.test_fraction of their rows as their own test split; leave it at 0")

    def _check_clock(self) -> None:
        """Under the simulated clock a task's duration must come from the system model."""
        if self.clock != "simulated":
            return
        for i, group in enumerate(self.groups):
            trace = group.system.trace
            if group.system.simulated_seconds_per_sample is None and not (trace and trace.absolute):
                raise ValueError(
                    f"groups[{i}] ({group.name}): clock: simulated needs "
                    "system.simulated_seconds_per_sample (a task lasts samples x that / speed), "
                    "or a system.trace with absolute speeds (speed_unit or format: fedscale)")
            if group.system.hang_prob > 0:
                raise ValueError(
                    f"groups[{i}] ({group.name}): system.hang_prob injects real hangs for the wall "
                    "clock's task_timeout_s; under clock: simulated use system.dropout_prob")

    def _check_heterogeneous(self) -> None:
        """Soft-label strategies and FedDF need the public set; late joiners a start."""
        cls = self.strategy.cls
        if cls.needs_public_set and (self.dataset is None or self.dataset.public_size == 0):
            raise ValueError(
                f"strategy {self.strategy.name!r} distills on a public set: set dataset.public_size "
                "(e.g. 200 held-out training examples)"
            )
        private = [f for f in ("secure_aggregation", "dp") if getattr(self.privacy, f) not in (False, None)]
        if private and not cls.supports_private_aggregation:
            why = ("its updates differ in layout per participant" if cls.heterogeneous()
                   else f"its updates carry {', '.join(cls.update_extras)} beside the payload")
            raise ValueError(
                f"privacy.{private[0]} is not supported with strategy {self.strategy.name!r} ({why}); "
                f"use one of: {', '.join(names_where(supports_private_aggregation=True))}"
            )
        if all(g.join_at > 0 for g in self.groups):
            raise ValueError("every group has join_at > 0: at least one group must start at version 0")

    def _check_privacy(self) -> None:
        privacy, schedule, policy = self.privacy, self.schedule, self.schedule.policy
        if privacy.secure_aggregation and not policy.supports_secure_aggregation:
            able = [m for m, cls in _SCHEDULE_MODES.items() if cls.policy.supports_secure_aggregation]
            raise ValueError(
                f"privacy.secure_aggregation needs schedule.mode {_one_of(able)}, not {schedule.mode!r}: "
                f"under {schedule.mode!r} {policy.no_secure_aggregation_because}"
            )
        if privacy.secure_aggregation:
            cohort, where = policy.max_cohort(schedule, self.num_participants)
            if privacy.min_cohort > cohort:
                raise ValueError(
                    f"privacy.min_cohort={privacy.min_cohort} exceeds the {cohort} {where}: "
                    "no aggregation could ever be decoded")
        if (privacy.secure_aggregation or privacy.dp is not None) and self.strategy.cls.needs_individual_updates:
            mean_based = names_where(needs_individual_updates=False, supports_private_aggregation=True)
            raise ValueError(
                f"strategy {self.strategy.name!r} inspects each update, but privacy.secure_aggregation "
                "and privacy.dp hand the strategy one combined update; use a mean-based strategy "
                f"({', '.join(mean_based)})"
            )

    def _check_dp_sgd(self) -> None:
        """Local DP-SGD protects the weight/delta a participant trains with plain local SGD;
        strategies whose client half does other local work declare ``supports_dp_sgd=False``."""
        if self.strategy.cls.supports_dp_sgd:
            return
        for i, group in enumerate(self.groups):
            if group.train.dp_sgd is not None:
                raise ValueError(
                    f"groups[{i}].train.dp_sgd is not supported with strategy {self.strategy.name!r} "
                    f"(its client half does more than plain local training of the weights); "
                    f"use one of: {', '.join(names_where(supports_dp_sgd=True))}"
                )

    @property
    def num_participants(self) -> int:
        return sum(g.count for g in self.groups)


class TuneSearch(Strict):
    """``fedray tune --search SEARCH.yaml``: what to vary and what to optimise.

    ``space`` maps a dotted path into the run config (``groups.<group name>.resources.num_cpus``,
    ``schedule.concurrency``, ...) to ``{grid: [...]}``, ``{choice: [...]}``,
    ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}`` or ``{randint: [lo, hi]}``.
    """

    space: dict[str, dict[Literal["grid", "choice", "uniform", "loguniform", "randint"], list[Any]]] = Field(
        ..., min_length=1
    )
    objective: Literal["time_to_target", "accuracy_at_budget", "metric_at_budget"] = Field(
        "time_to_target", description="time_to_target: seconds to the target; metric_at_budget "
        "(accuracy_at_budget is its classification name): the task's metric within budget_s")
    target_accuracy: float | None = Field(0.85, gt=0, le=1, description="for time_to_target")
    target: float | None = Field(None, description="for time_to_target: a target for the run's "
                                 "task.metric (r2, mse, macro_f1, ...) instead of target_accuracy")
    budget_s: float = Field(60.0, gt=0, description="training seconds per trial, from its first dispatch")
    startup_s: float = Field(300.0, ge=0, description="hang guard: wall time a trial may spend starting up")
    max_aggregations: int = Field(100, ge=1, description="each trial's cap on aggregations")
    num_samples: int = Field(1, ge=1, description="repeats of the grid (or random draws)")
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="default: 1 under clock: wall, which keeps wall-clock timings clean; "
        "under clock: simulated as many as the resources allow, since trials cannot bias each "
        "other's simulated seconds")
    driver_cpus: float = Field(0.5, ge=0, description="CPUs reserved for each trial's driver")
    num_cpus: float | None = Field(None, gt=0, description="logical CPUs of a local Ray")

    @model_validator(mode="after")
    def _well_formed(self) -> TuneSearch:
        for path, spec in self.space.items():
            if len(spec) != 1:
                raise ValueError(f"space.{path}: give exactly one of grid, choice, uniform, loguniform, randint")
            (kind, values), = spec.items()
            if kind in ("uniform", "loguniform", "randint") and len(values) != 2:
                raise ValueError(f"space.{path}: {kind} needs [low, high]")
            if not values:
                raise ValueError(f"space.{path}: {kind} needs at least one value")
        if self.objective == "time_to_target" and self.target_accuracy is None:
            raise ValueError("objective time_to_target needs target_accuracy")
        return self


# -- loading and errors ---------------------------------------------------------------


def load_config(source: str | Path | dict[str, Any]) -> RunConfig:
    """Parse and validate a YAML file (or an already-parsed mapping)."""
    if isinstance(source, dict):
        raw: Any = source
        where = "the config"
    else:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        where = str(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of settings at the top level, got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings in {where}:\n{_flatten_errors(exc)}") from None


def missing_data_files(config: RunConfig) -> list[str]:
    """Per-participant files that do not exist on this machine (for local runs)."""
    problems = []
    for group in config.groups:
        if isinstance(group.data, FileData):
            if group.data.paths is not None and len(group.data.paths) != group.count:
                problems.append(
                    f"group {group.name}: {len(group.data.paths)} paths for {group.count} participants"
                )
                continue
            for i in range(group.count):
                name = participant_name(group, i)
                path = Path(group.data.path_for(i, name, group.name))
                if not path.exists():
                    problems.append(f"participant {name}: data file not found: {path}")
        trace = group.system.trace
        for what, path in (("device trace", trace and trace.path), ("trace windows", trace and trace.windows)):
            if path and not Path(path).exists():
                problems.append(f"group {group.name}: {what} not found: {path}")
    if config.evaluation.path and not Path(config.evaluation.path).exists():
        problems.append(f"evaluation: test file not found: {config.evaluation.path}")
    return problems


def participant_name(group: Group, index: int) -> str:
    return f"{group.name}-{index}"


def _flatten_errors(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = _format_loc(err["loc"])
        msg = err["msg"]
        tagged = _TAGGED_UNIONS.get(err["loc"][-1]) if err["loc"] else None
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(err["loc"][:-1])
            tag = _tag_at(err["loc"][:-1])
            msg = ("unknown field" + (f" for {tag}" if tag else "")
                   + (f"; allowed: {', '.join(allowed)}" if allowed else ""))
        elif err["type"] == "union_tag_invalid" and tagged and isinstance(err["input"], dict):
            key, tags = tagged  # report it at the tag's field, as for any other Literal
            loc = _format_loc((*err["loc"], key))
            msg = f"Input should be {_one_of(list(tags))} (got {err['input'].get(key)!r})"
        elif err["type"] == "union_tag_not_found" and tagged:
            loc, msg = _format_loc((*err["loc"], tagged[0])), "required field is missing"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and err["type"] not in ("model_type", "dict_type") and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        msg = msg.removeprefix("Value error, ")
        lines.append(f"  {prefix}{loc}: {msg}" if loc else f"  {prefix}{msg}")
    return "\n".join(lines)


def _format_loc(loc: tuple) -> str:
    out, previous = "", None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _is_tag(previous, part):
            pass  # the discriminator tag pydantic inserts; users never write it
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out


_TAGGED_UNIONS: dict[str, tuple[str, dict[str, type[BaseModel]]]] = {
    "data": ("source", {"partition": PartitionData, "file": FileData, "python": PythonData, "images": ImageData}),
    "schedule": ("mode", dict(_SCHEDULE_MODES)),
    "availability": ("availability", {"periodic": Availability, "windows": Windows}),  # tag from the keys
}
"""Fields holding a tagged union: the tag's own field, and the model behind each tag."""


def _is_tag(field: Any, part: Any) -> bool:
    """Whether ``part``, right after ``field`` in an error path, is a union tag."""
    return isinstance(field, str) and field in _TAGGED_UNIONS and part in _TAGGED_UNIONS[field][1]


def _tag_at(loc: tuple) -> str:
    """``mode 'sync'`` when ``loc`` ends in a union tag (names the variant), else ''."""
    if len(loc) >= 2 and _is_tag(loc[-2], loc[-1]):
        return f"{_TAGGED_UNIONS[loc[-2]][0]} {loc[-1]!r}"
    return ""


def _one_of(names: list[str]) -> str:
    """``'a', 'b' or 'c'``, as pydantic words a Literal."""
    quoted = [repr(n) for n in names]
    return " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)


def _fields_at(loc: tuple) -> list[str]:
    """Field names allowed at ``loc`` inside RunConfig, to suggest after a typo."""
    cls: Any = RunConfig
    previous = None
    for part in loc:
        if isinstance(part, int):
            continue
        if _is_tag(previous, part):
            cls, previous = _TAGGED_UNIONS[previous][1][part], part  # the variant's model
            continue
        field = cls.model_fields.get(part) if _is_model(cls) else None
        if field is None:
            return []
        cls, previous = _model_in(field.annotation), part
    return sorted(cls.model_fields) if _is_model(cls) else []


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _model_in(annotation: Any) -> Any:
    """The first BaseModel class inside an annotation like ``list[Group]`` or ``A | None``."""
    if _is_model(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
