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
    forward = _forward_logs()
    with _lean_local_ray(forward), _task_events(opts.task_events):
        ray.init(address="local", num_cpus=num_cpus, num_gpus=opts.num_gpus,
                 include_dashboard=False, logging_level="WARNING", log_to_driver=forward)
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
def _lean_local_ray(forward_logs: bool) -> Iterator[None]:
    """Start a local Ray without the Python processes a Ray started for one run never uses:
    on a 2-core laptop each competes with the raylet for the cores while Ray starts.

    - Its API server (``include_dashboard=False`` alone still starts one, to report usage
      statistics, and ``ray.init`` polls ~0.9 s for it to register); such a Ray serves no
      dashboard, Jobs or state API.
    - Its autoscaler monitor: a local Ray has nothing to scale, and ``ray.shutdown`` gave
      it a second to exit on SIGTERM that it never took.
    - Its log monitor, where participants' output is not forwarded here (``--quiet``).
    - The dashboard agent's metrics export: the agent starts as it does in a minimal
      ``ray`` install, so the raylet, which waits for the agent, waits less, and the
      driver skips importing aiohttp and OpenTelemetry (~0.3 s) to decide how to start it.

    Starting Ray and two actors that import torch took 3.48 s instead of 4.04 s on a 2-core
    laptop (Ray 2.60; medians of 7, BENCHMARKS.md). Metrics a participant records with
    ``ray.util.metrics`` go nowhere on such a Ray; join a cluster to keep them. Reaches
    into Ray's private node class and utilities; whatever has changed there, Ray starts
    those processes as it always did."""
    node_class = getattr(getattr(ray._private, "node", None), "Node", None)

    def no_api_server(node: Any, *args: Any, **kwargs: Any) -> None:
        node._webui_url = None

    def skip(node: Any, *args: Any, **kwargs: Any) -> None:
        return None

    with contextlib.ExitStack() as swaps:
        swaps.enter_context(_swapped(node_class, "start_api_server", no_api_server))
        swaps.enter_context(_swapped(node_class, "start_monitor", skip))
        if not forward_logs:
            swaps.enter_context(_swapped(node_class, "start_log_monitor", skip))
        swaps.enter_context(_swapped(getattr(ray._private, "utils", None), "get_dashboard_dependency_error",
                                     lambda: ImportError("a Ray for one run exports no metrics")))
        yield


@contextlib.contextmanager
def _swapped(owner: Any, name: str, replacement: Any) -> Iterator[None]:
    """``owner.name`` replaced while the block runs, where it exists."""
    original = getattr(owner, name, None)
    if original is None:
        yield
        return
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


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
    ray.shutdown()


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
