"""Everything one participant needs to load its data and build its model by itself."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from actors.spec.base import Strict
from actors.spec.data import DatasetSpec, DataSpec, FittedTransform, PreprocessSpec
from actors.spec.system import SystemSpec
from actors.spec.training import ModelSpec, TaskSpec, TrainSpec


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
