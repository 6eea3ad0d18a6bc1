"""Where the global model is evaluated: on a pool worker beside the driver, or in the driver.

Evaluating needs torch, and importing torch is a second of CPU and 200 MB in a driver that
otherwise only moves flat vectors. A pool worker on the driver's own node has torch loaded
and sees the same files (the test split, ``evaluation.path``), so the driver's evaluator
lives there (:meth:`PoolWorker.host_call <actors.participant.pool.PoolWorker.host_call>`)
and a driver on pool workers never imports torch: a warm ``fedray run`` starts sooner and
holds half the memory. Pool workers on other nodes are never used (a silo's machine does
not have the driver's test set). Without one, or once every such worker has died, the
driver builds the evaluator itself; the numbers are the same, from the same code on the
same CPU arithmetic.

This module imports no torch; :func:`build_evaluator` imports the evaluator where it runs.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from actors.spec.data import FittedTransform
from orchestrator.config import RunConfig
from strategies.types import Layout

if TYPE_CHECKING:
    from orchestrator.server.evaluation import ServerEvaluator

LOST_HOST = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
"""The host is gone or restarting: evaluate elsewhere (the task itself did not fail)."""


@dataclass(frozen=True)
class EvaluatorInfo:
    """What the driver needs to know about its evaluator, wherever it runs."""

    layout: Layout
    num_examples: int
    target_std: float | None
    """The test targets' largest per-column standard deviation (None: under two rows)."""


def build_evaluator(config: RunConfig, group: str, num_outputs: int, transform: FittedTransform | None,
                    site_features: Sequence[str]) -> ServerEvaluator:
    """The evaluator of ``group``'s architecture, built in the process that calls it."""
    from orchestrator.server.evaluation import ServerEvaluator

    spec = next(g for g in config.groups if g.name == group)
    return ServerEvaluator(config, spec, num_outputs, transform, site_features)


def driver_node_hosts(members: Sequence[Any]) -> list[Any]:
    """The distinct pool workers serving ``members`` on this driver's node, in order."""
    pooled = [m for m in members if m.pooled and "node_id" in m.info]  # node_id: described by an actor
    node = ray.get_runtime_context().get_node_id() if pooled else None
    return list({m.handle: None for m in pooled if m.info["node_id"] == node})


class GlobalEvaluator:
    """Evaluates global vectors with the evaluator ``build`` makes, on the first of
    ``hosts`` still alive, else in this process. An error in the evaluation itself (a
    column missing from the evaluation table) is raised as its own exception."""

    def __init__(self, build: functools.partial, hosts: Sequence[Any]) -> None:
        self.hosts = list(hosts)
        self.key = uuid.uuid4().hex  # one evaluator per run on a worker that serves many runs
        self.build_ref = ray.put(build) if self.hosts else None
        self.build = build
        self.local: ServerEvaluator | None = None
        self.info: EvaluatorInfo = self._call(("info",))

    def __call__(self, params: np.ndarray, layout: Layout, shipped: ray.ObjectRef | None = None) -> dict[str, float]:
        """Metrics of ``params``. A host reads them from ``shipped`` where given (the
        broadcast GlobalState holding them), so they are not put in Ray's store twice."""
        here = ("metrics", params, layout)
        return self._call(("state_metrics", shipped, layout) if shipped is not None else here, here)

    def _call(self, remote: tuple[Any, ...], here: tuple[Any, ...] | None = None) -> Any:
        """``(method, *args)``: ``remote`` on the first live host, else ``here`` (by default
        the same) in this process."""
        while self.hosts:
            try:
                return ray.get(self.hosts[0].host_call.remote(self.key, self.build_ref, *remote))
            except LOST_HOST as exc:
                logging.getLogger("fedray").debug("evaluation host lost (%s); trying the next", type(exc).__name__)
                self.hosts.pop(0)
            except ray.exceptions.RayTaskError as exc:
                raise exc.cause if isinstance(exc.cause, Exception) else exc from None
        if self.local is None:
            self.local = self.build()
        method, *args = here or remote
        return getattr(self.local, method)(*args)
