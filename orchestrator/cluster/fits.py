"""Can a group ever be placed on these nodes? One answer, for every place that asks.

The run's start-up (:mod:`orchestrator.cluster.lifecycle`), the profiler and placement
itself ask this of ``ray.nodes()``; pre-flight (:mod:`orchestrator.cluster.preflight`)
counts the same per-process resources against the machine's totals. Pure: no Ray import.
"""

from __future__ import annotations

from typing import Any

from orchestrator.config import Group, NodePlacement, PlacementGroupOption

NODE_SHARE = 0.001
"""How much of a node's custom resource one pinned participant claims: enough to
require the resource, small enough that any number of participants fit."""


class PlacementError(RuntimeError):
    """A group cannot be placed on this cluster; the message names group and resource."""


def process_resources(group: Group) -> dict[str, float]:
    """What one process of ``group`` (a participant's actor, or a pool worker) asks Ray
    for: its CPUs, GPUs, reserved memory and custom resources, those it asks for at all."""
    res = group.resources
    out = {"CPU": res.num_cpus, "GPU": res.num_gpus, **res.resources}
    if res.memory:
        out["memory"] = float(res.memory)
    return {k: float(v) for k, v in out.items() if v}


def bundle(group: Group) -> dict[str, float]:
    """What one process of ``group`` needs of its node, as a placement-group bundle: its
    resources, and a share of the custom resource naming the node it is pinned to."""
    out = process_resources(group)
    if isinstance(group.placement, NodePlacement) and node_label(group.placement.node) is None:
        out[group.placement.node] = out.get(group.placement.node, 0.0) + NODE_SHARE
    return out


def node_label(node: str) -> tuple[str, str] | None:
    """``"zone=eu"`` -> ``("zone", "eu")``: a node-label selector; None for a custom resource."""
    if "=" not in node:
        return None
    key, value = node.split("=", 1)
    return key.strip(), value.strip()


def placement_problem(group: Group, nodes: list[dict[str, Any]]) -> str | None:
    """Why ``group`` can never be placed on ``nodes`` (``ray.nodes()``; only alive ones
    count), or None: its ``placement`` names a node nobody is, no node offers what one of
    its processes needs (:func:`bundle`), or STRICT_SPREAD needs more such nodes than there are."""
    alive = [n for n in nodes if n.get("Alive")]
    placement = group.placement
    if isinstance(placement, NodePlacement):
        label = node_label(placement.node)
        if label is None and not any(n["Resources"].get(placement.node, 0) > 0 for n in alive):
            return (f"group {group.name}: placement node {placement.node!r}: no node in the Ray "
                    f"cluster offers custom resource {placement.node!r} (start the node with "
                    f"--resources '{{\"{placement.node}\": 1}}')")
        if label is not None and not any(n.get("Labels", {}).get(label[0]) == label[1] for n in alive):
            return f"group {group.name}: placement node {placement.node!r}: no node has label {label[0]}={label[1]}"
    need = bundle(group)
    fits = [n for n in alive if all(n["Resources"].get(k, 0) >= v for k, v in need.items())]
    if not fits:
        have = {k: max((n["Resources"].get(k, 0) for n in alive), default=0) for k in need}
        short = [k for k, v in need.items() if have[k] < v]
        offers = "offers " if short else "offers all at once of "  # each is somewhere, not on one node
        return (f"group {group.name}: no node in the Ray cluster {offers}"
                + ", ".join(f"{k}={need[k]:g} (largest node has {have[k]:g})" for k in short or need))
    strict = isinstance(placement, PlacementGroupOption) and placement.placement_group == "STRICT_SPREAD"
    if strict and len(fits) < group.count:
        return (f"group {group.name}: STRICT_SPREAD needs {group.count} nodes each offering "
                f"{need}, the cluster has {len(fits)}")
    return None


def check_placement(groups: list[Group], nodes: list[dict[str, Any]]) -> None:
    """Raise :class:`PlacementError` for the first group that can never be placed on ``nodes``."""
    for group in groups:
        if (problem := placement_problem(group, nodes)) is not None:
            raise PlacementError(problem)
