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
naming the group and what is missing, instead of hanging in Ray's pending queue.
"""

from __future__ import annotations

import contextlib
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from orchestrator.config import Group, NodePlacement, PlacementGroupOption

NODE_SHARE = 0.001
"""How much of a node's custom resource one pinned participant claims: enough to
require the resource, small enough that any number of participants fit."""


class PlacementError(RuntimeError):
    """A group cannot be placed on this cluster; the message names group and resource."""


def bundle(group: Group) -> dict[str, float]:
    """The resources one participant of ``group`` needs, as a placement-group bundle."""
    res = group.resources
    out = {"CPU": res.num_cpus, "GPU": res.num_gpus, **res.resources}
    if res.memory:
        out["memory"] = float(res.memory)
    if isinstance(group.placement, NodePlacement) and "=" not in group.placement.node:
        out[group.placement.node] = NODE_SHARE
    return {k: float(v) for k, v in out.items() if v}


def _label(node: str) -> tuple[str, str] | None:
    if "=" not in node:
        return None
    key, value = node.split("=", 1)
    return key.strip(), value.strip()


def check_placement(groups: list[Group], nodes: list[dict[str, Any]]) -> None:
    """Raise :class:`PlacementError` if some group can never be placed on ``nodes``.

    ``nodes`` is ``ray.nodes()``; only alive nodes count.
    """
    alive = [n for n in nodes if n.get("Alive")]
    for group in groups:
        placement = group.placement
        if isinstance(placement, NodePlacement):
            label = _label(placement.node)
            if label is None and not any(n["Resources"].get(placement.node, 0) > 0 for n in alive):
                raise PlacementError(
                    f"group {group.name}: placement node {placement.node!r}: no node in the Ray "
                    f"cluster offers custom resource {placement.node!r} (start the node with "
                    f"--resources '{{\"{placement.node}\": 1}}')"
                )
            if label is not None and not any(n.get("Labels", {}).get(label[0]) == label[1] for n in alive):
                raise PlacementError(
                    f"group {group.name}: placement node {placement.node!r}: no node has label "
                    f"{label[0]}={label[1]}"
                )
        need = bundle(group)
        fits = [n for n in alive if all(n["Resources"].get(k, 0) >= v for k, v in need.items())]
        strict = isinstance(placement, PlacementGroupOption) and placement.placement_group == "STRICT_SPREAD"
        if strict and len(fits) < group.count:
            raise PlacementError(
                f"group {group.name}: STRICT_SPREAD needs {group.count} nodes each offering "
                f"{need}, the cluster has {len(fits)}"
            )


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
            label = _label(placement.node)
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
