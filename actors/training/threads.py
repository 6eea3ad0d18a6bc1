"""Torch's intra-op threads for the computation about to run, and the one thread a pool
worker's batched steps run on.

A participant gets as many torch threads as its group's ``num_cpus``. A pool worker serves
its calls in threads other than its process's main one, and there OpenMP's helper threads
cost more than they give on small models: on a 2-core laptop two threads made an MLP
64-128-10's step on 256 rows 1.1-1.3 ms against 0.4-0.6 ms with one, while a 2048-wide MLP's
step still gained (69 against 96 ms; BENCHMARKS.md). A pool worker measuring ``batched:
auto`` (:mod:`actors.participant.batching_probe`) also times one at a time on one thread and
keeps that here, per architecture, when it was faster; the computations then set their
count right before they run, since the last call to set it may have come from another
thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

T = TypeVar("T")

_ALONE: dict[tuple, int] = {}
"""(device type, layout, threads asked for) -> threads for training one at a time."""


def _key(local: Any) -> tuple:
    return local.device.type, local.layout, local.spec.num_threads


def use(count: int) -> None:
    """Run the calling thread's next torch computations on ``count`` threads (at least 1)."""
    torch.set_num_threads(max(1, count))


def alone(local: Any) -> int:
    """Threads for training ``local`` (a ``TorchLocalModel``) one at a time: its group's,
    unless this process measured fewer to be faster for its architecture."""
    return _ALONE.get(_key(local), max(1, local.spec.num_threads))


def prefer_alone(local: Any, count: int) -> None:
    """Train ``local``'s architecture on ``count`` threads when one at a time, in this process."""
    _ALONE[_key(local)] = count


COMPUTE_THREAD = "fedray-compute"
_compute: ThreadPoolExecutor | None = None
_compute_lock = threading.Lock()


def on_compute_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` run on this process's one compute thread, its result or its
    exception returned as if called here. OpenMP keeps its helper threads per calling
    thread, and the batched step used to run in whichever task thread arrived last: on a
    2-core laptop 64 MLPs 64-128-10's batched step took 51-53 ms there against 39-40 ms
    always on the same thread (BENCHMARKS.md). Already on that thread, ``fn`` runs at once."""
    global _compute
    if threading.current_thread().name.startswith(COMPUTE_THREAD):
        return fn(*args, **kwargs)
    with _compute_lock:
        if _compute is None:
            _compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix=COMPUTE_THREAD)
    return _compute.submit(fn, *args, **kwargs).result()
