"""The whole run: :class:`RunConfig` and the checks that span its blocks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from actors.spec.base import Strict
from actors.spec.data import DatasetSpec, FileData, ImageData, PartitionData, PreprocessSpec
from actors.spec.training import TaskSpec
from orchestrator.config.errors import one_of
from orchestrator.config.groups import Group
from orchestrator.config.options import (
    CheckpointPolicy,
    Evaluation,
    Logging,
    Privacy,
    RayOptions,
    Stop,
    StrategyConfig,
    UpdatePolicy,
)
from orchestrator.config.schedule import SCHEDULE_MODES, Schedule, SyncSchedule
from strategies import names_where


class RunConfig(Strict):
    name: str = "fedray"
    seed: int = 0
    clock: Literal["wall", "simulated"] = Field(
        "wall", description="wall: tasks last as long as they really take (deployments); "
        "simulated: each task lasts what the system model says, and results are handled in "
        "simulated-time order, so a run is the same on any machine (simulations)",
    )
    calibration: str | None = Field(
        None, description="clock: simulated: a calibration file (fedray profile --calibration): a "
        "task lasts its group's measured cost at its num_cpus/num_gpus, instead of "
        "system.simulated_seconds_per_sample")
    capacity: str | None = Field(
        None, description="clock: simulated: the cluster tasks share, '4 nodes x {CPU: 16, GPU: 1}' or "
        "a YAML file; a task waits in simulated time until its CPUs and GPU share are free on a node. "
        "Default with a calibration: this machine")
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
            if self.calibration is not None or self.capacity is not None:
                raise ValueError("calibration and capacity price tasks in simulated time: set clock: simulated")
            return
        if self.capacity is not None:  # a description that cannot be read fails here, naming the bad part
            from orchestrator.cluster.capacity import Capacity

            Capacity.from_spec(self.capacity)
        if self.calibration is not None:  # likewise a missing or unreadable calibration, naming the file
            from orchestrator.cluster.calibration import Calibration, CalibrationError

            try:
                Calibration.load(self.calibration)
            except CalibrationError as exc:
                raise ValueError(f"calibration: {exc}") from None
        for i, group in enumerate(self.groups):
            trace = group.system.trace
            if (group.system.simulated_seconds_per_sample is None and not (trace and trace.absolute)
                    and self.calibration is None):
                raise ValueError(
                    f"groups[{i}] ({group.name}): clock: simulated needs "
                    "system.simulated_seconds_per_sample (a task lasts samples x that / speed), "
                    "a system.trace with absolute speeds (speed_unit or format: fedscale), or a calibration")
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
            able = [m for m, cls in SCHEDULE_MODES.items() if cls.policy.supports_secure_aggregation]
            raise ValueError(
                f"privacy.secure_aggregation needs schedule.mode {one_of(able)}, not {schedule.mode!r}: "
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
