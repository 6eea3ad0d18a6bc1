"""What a participant tells the driver about itself once, at start-up."""

from __future__ import annotations

import os
import socket
from typing import Any

import torch

from actors.data.load import LocalData
from actors.participant.private_state import PrivateState
from actors.spec.participant import ParticipantSpec
from strategies.types import Layout


def describe_participant(spec: ParticipantSpec, data: LocalData, layout: Layout, device: torch.device,
                         private: PrivateState) -> dict[str, Any]:
    """Sizes, shapes, where it runs and what it restored: the driver plans and records
    from these, and needs nothing but them (not the model itself)."""
    info: dict[str, Any] = {
        "name": spec.name,
        "group": spec.group,
        "num_examples": len(data.y_train),
        "num_test_examples": len(data.y_test),
        "input_shape": data.input_shape,
        "num_classes": data.num_classes,
        "num_parameters": layout.size,
        "layout": layout,
        "source": data.source,
        "feature_names": data.feature_names,
        "feature_scales": data.feature_scales,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "speed": spec.speed,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "tasks_done": private.tasks_done,
        "restored_state": private.restored,
    }
    import ray  # here: the participant's code runs without Ray too (tests, profiling)

    ctx = ray.get_runtime_context() if ray.is_initialized() else None
    if ctx is not None and ctx.get_actor_id() is not None:  # inside an actor, not a driver
        info["node_id"] = ctx.get_node_id()
        info["assigned_resources"] = ctx.get_assigned_resources()
        info["gpu_ids"] = ray.get_gpu_ids()
    return info
