"""Joining Ray: the cluster a config names, or a local Ray sized for the run's processes."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections.abc import Iterator
from typing import Any

import ray
from ray._private import ray_constants

from orchestrator.cluster import preflight
from orchestrator.cluster.warm_workers import WARM
from orchestrator.config import ConfigError, RunConfig


def connect_ray(config: RunConfig) -> bool:
    """Join the cluster the config names, or start a local Ray with enough logical CPUs for
    every participant process (a pool's workers, not its participants); returns whether
    this call started Ray (and so must shut it down)."""
    if ray.is_initialized():
        return False
    opts = config.ray
    WARM.shared = opts.address is not None and opts.keep_workers  # pool workers outlive the driver too
    if opts.address is not None:
        problem = unreachable(opts.address)
        if problem is None:
            try:
                with _task_events(opts.task_events):
                    ray.init(address=opts.address, logging_level="WARNING", log_to_driver=_forward_logs())
                return True
            except ConnectionError as exc:  # 'auto' with no Ray on this machine
                problem = str(exc).split(". Please")[0]
        raise ConfigError(f"ray.address {opts.address!r}: {problem}; start one with `ray start --head`, "
                          "or leave ray.address out (and --address off) to run on a local Ray of its own")
    wanted = sum(g.resources.num_cpus * preflight.processes(g) for g in config.groups)
    num_cpus = opts.num_cpus or max(os.cpu_count() or 1, math.ceil(wanted))
    # address="local": never attach by accident to a cluster `ray start` left running
    with _no_api_server(), _task_events(opts.task_events):
        ray.init(address="local", num_cpus=num_cpus, num_gpus=opts.num_gpus,
                 include_dashboard=False, logging_level="WARNING", log_to_driver=_forward_logs())
    return True


TASK_EVENTS_ENV = "RAY_enable_core_worker_task_event_to_gcs"


@contextlib.contextmanager
def _task_events(report: bool) -> Iterator[None]:
    """Ray's task events off for this driver (and for a local Ray it starts here, which
    serves no state API to read them) unless ``report``: a driver reporting them spends
    ~0.25 s of its exit tearing that down (Ray 2.60, 2-core laptop: ``ray.shutdown`` of
    a joined driver 0.27-0.29 s with them, 0.02-0.03 s without), a tenth of a warm run.
    Ray reads the setting as the driver's core worker starts; the caller's environment
    is restored after, and a value the user set wins."""
    if report or TASK_EVENTS_ENV in os.environ:
        yield
        return
    os.environ[TASK_EVENTS_ENV] = "0"
    try:
        yield
    finally:
        os.environ.pop(TASK_EVENTS_ENV, None)


@contextlib.contextmanager
def _no_api_server() -> Iterator[None]:
    """Start a local Ray without its API server process. With ``include_dashboard=False``
    Ray still starts it (to report usage statistics) and ``ray.init`` polls up to its
    timeout until it registers: ~0.9 s of a 2-core laptop's cold start (Ray 2.60), and a
    Python process competing with the raylet for the cores. A Ray started for one run
    serves no dashboard, Jobs or state API. Reaches into Ray's private node class; where
    that has changed, Ray starts as it always does."""
    node_class = getattr(getattr(ray._private, "node", None), "Node", None)
    original = getattr(node_class, "start_api_server", None)
    if original is None:
        yield
        return

    def skip(node: Any, *args: Any, **kwargs: Any) -> None:
        node._webui_url = None

    node_class.start_api_server = skip
    try:
        yield
    finally:
        node_class.start_api_server = original


def unreachable(address: str) -> str | None:
    """Why nothing answers at a ``host:port`` address, or None (also for any other form,
    ``auto`` or a ``ray://`` client address): ``ray.init`` would wait minutes there before
    it failed."""
    host, _, port = address.rpartition(":")
    if "://" in address or not (host and port.isdigit()):
        return None
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        return f"no Ray cluster at {address}: nothing answers there ({exc})"
    return None


def disconnect_ray() -> None:
    """Leave the Ray :func:`connect_ray` joined (a local one it started stops), this
    driver's idle pool workers released first."""
    WARM.release()
    _stop_monitor()
    ray.shutdown()


def _stop_monitor() -> None:
    """Kill the local Ray's autoscaler monitor before ``ray.shutdown``. Ray stops its
    processes one after another, each given a second to exit on SIGTERM, and the monitor
    of a local Ray never does: of a 1.36 s shutdown on a 2-core laptop (Ray 2.60), 1.01 s
    waited for it before Ray killed it anyway. Nothing of a run's lives in it. Reaches into
    Ray's private node object, so any surprise there leaves the shutdown to Ray alone."""
    with contextlib.suppress(Exception):
        node = ray._private.worker._global_node
        for info in node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []):
            info.process.kill()
            info.process.wait(timeout=1)


@contextlib.contextmanager
def ray_for(config: RunConfig) -> Iterator[bool]:
    """Ray for one command: joined or started on entry (yields whether it was started
    here), and shut down on exit when it was."""
    started = connect_ray(config)
    try:
        yield started
    finally:
        if started:
            disconnect_ray()


def _forward_logs() -> bool:
    """Whether participants' own output reaches this terminal: not when fedray's notices are
    off (``fedray run --quiet``), so a thousand failing participants print nothing here."""
    return logging.getLogger("fedray").isEnabledFor(logging.INFO)
