"""A group of participants: its model, data, training, resources, placement and hosting."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, model_validator

from actors.spec.base import Strict
from actors.spec.data import DataSpec, PartitionData
from actors.spec.system import SystemSpec
from actors.spec.training import ModelSpec, TrainSpec


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
        "batched computation where the local step allows it (actors/participant/cohort.py); auto: each "
        "worker expecting two or more tasks at once measures both ways at start and does what was faster "
        "(orchestrator/cluster/batching.py)")

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
    def pool_size(self) -> int:
        """How many pool workers serve this group (under ``hosting: pool``)."""
        return self.workers or max(1, min(self.count, os.cpu_count() or 1))


def participant_name(group: Group, index: int) -> str:
    return f"{group.name}-{index}"
