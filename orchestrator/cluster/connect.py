"""Joining Ray: the cluster a config names, or a local Ray sized for the run's processes."""

from __future__ import annotations

import logging
import math
import os

import ray

from orchestrator.cluster import preflight
from orchestrator.cluster.warm_workers import WARM
from orchestrator.config import RunConfig


def connect_ray(config: RunConfig) -> bool:
    """Join the cluster the config names, or start a local Ray with enough logical CPUs for
    every participant process (a pool's workers, not its participants); returns whether
    this call started Ray (and so must shut it down)."""
    if ray.is_initialized():
        return False
    opts = config.ray
    WARM.shared = opts.address is not None and opts.keep_workers  # pool workers outlive the driver too
    if opts.address is not None:
        ray.init(address=opts.address, logging_level="WARNING", log_to_driver=_forward_logs())
        return True
    wanted = sum(g.resources.num_cpus * preflight.processes(g) for g in config.groups)
    num_cpus = opts.num_cpus or max(os.cpu_count() or 1, math.ceil(wanted))
    # address="local": never attach by accident to a cluster `ray start` left running
    ray.init(address="local", num_cpus=num_cpus, num_gpus=opts.num_gpus,
             include_dashboard=False, logging_level="WARNING", log_to_driver=_forward_logs())
    return True


def _forward_logs() -> bool:
    """Whether participants' own output reaches this terminal: not when fedray's notices are
    off (``fedray run --quiet``), so a thousand failing participants print nothing here."""
    return logging.getLogger("fedray").isEnabledFor(logging.INFO)
