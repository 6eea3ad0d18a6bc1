"""The run's option blocks: strategy, stop, evaluation, update hygiene, checkpoints, privacy, logging, Ray."""

from __future__ import annotations

from pydantic import Field, ValidationError, model_validator

from actors.spec.base import NamedOptions, Strict
from orchestrator.config.errors import flatten_errors
from strategies import Strategy, build_strategy, get_strategy_class


class StrategyConfig(NamedOptions):
    """``name`` plus that strategy's hyperparameters, checked against its ``Params``."""

    name: str = "fedavg"

    def check_options(self) -> None:
        try:
            build_strategy(self.name, self.options)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        except ValidationError as exc:
            raise ValueError(
                flatten_errors(exc, prefix=f"strategy {self.name!r} option ").strip()
            ) from None

    @property
    def cls(self) -> type[Strategy]:
        """The strategy class, whose declared capabilities the checks below read."""
        return get_strategy_class(self.name)

    def build(self) -> Strategy:
        """A fresh strategy instance with its validated hyperparameters."""
        return build_strategy(self.name, self.options)


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
    keep_workers: bool = Field(True, description="joining a cluster (address): leave its pool workers "
                               "running, for the next run of the same fedray code to take over "
                               "(fedray release kills them)")
    task_events: bool = Field(False, description="report fedray's Ray calls as task events (Ray's dashboard "
                              "task list, `ray list tasks`); off: a driver that reports them waits ~0.25 s at "
                              "exit (Ray 2.60), and the run's history records every task anyway")
