"""Where participants run: a group's ``placement`` turned into Ray actor options.

Everything here is Ray's own scheduling machinery, chosen per group:

- ``default``: Ray's hybrid policy (pack a node until it is half full, then spread).
- ``spread``: ``scheduling_strategy="SPREAD"``, one actor per node round-robin.
- ``pack``: a placement group with strategy PACK, one bundle per participant.
- ``{node: site_b}``: a tiny demand of the custom resource ``site_b``, so only nodes
  started with ``--resources '{"site_b": 1}'`` qualify; ``{node: "zone=eu"}`` instead
  uses Ray's node-label selector.
- ``{placement_group: STRICT_SPREAD}``: a placement group with that strategy.

A group that can never be placed fails before any actor is created, with a message
naming the group and what is missing, instead of hanging in Ray's pending queue
(:func:`orchestrator.cluster.fits.check_placement`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from orchestrator.cluster.fits import NODE_SHARE, PlacementError, bundle, node_label
from orchestrator.config import Group, NodePlacement, PlacementGroupOption


class Placements:
    """The placement groups a run reserved, and the actor options for each participant.

    >>> # placements = Placements(config.groups)      # reserves, or raises PlacementError
    >>> # Participant.options(**placements.actor_options(group, 0)).remote(spec)
    >>> # placements.release()
    """

    def __init__(self, groups: list[Group]) -> None:
        self.groups: dict[str, PlacementGroup] = {}
        try:
            self._reserve(groups)
        except BaseException:
            self.release()
            raise

    def _reserve(self, groups: list[Group]) -> None:
        pending = {}
        for group in groups:
            strategy, timeout = _pg_strategy(group)
            if strategy is None:
                continue
            pg = placement_group([bundle(group)] * group.count, strategy=strategy,
                                 name=f"fedray-{group.name}")
            self.groups[group.name] = pg
            pending[group.name] = (pg, strategy, timeout)
        for name, (pg, strategy, timeout) in pending.items():
            ready, _ = ray.wait([pg.ready()], timeout=timeout)
            if not ready:
                raise PlacementError(
                    f"group {name}: Ray could not reserve a {strategy} placement group "
                    f"within {timeout:g}s (not enough free resources on the right nodes)"
                )

    def actor_options(self, group: Group, index: int) -> dict[str, Any]:
        """Keyword arguments for ``ActorClass.options`` for participant ``index`` of ``group``."""
        res = group.resources
        resources = dict(res.resources)
        options: dict[str, Any] = {
            "num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "memory": res.memory,
            "max_restarts": res.max_restarts, "max_task_retries": 0,
        }
        placement = group.placement
        if group.name in self.groups:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                self.groups[group.name], placement_group_bundle_index=index
            )
        elif placement == "spread":
            options["scheduling_strategy"] = "SPREAD"
        if isinstance(placement, NodePlacement):
            label = node_label(placement.node)
            if label is None:
                resources[placement.node] = resources.get(placement.node, 0) + NODE_SHARE
            else:
                options["label_selector"] = {label[0]: label[1]}
        options["resources"] = resources or None
        return options

    def release(self) -> None:
        """Give the reserved resources back (idempotent)."""
        for pg in self.groups.values():
            with contextlib.suppress(Exception):  # Ray already gone: nothing left to free
                remove_placement_group(pg)
        self.groups = {}


def _pg_strategy(group: Group) -> tuple[str | None, float]:
    placement = group.placement
    if placement == "pack":
        return "PACK", 60.0
    if isinstance(placement, PlacementGroupOption):
        return placement.placement_group, placement.timeout_s
    return None, 0.0
