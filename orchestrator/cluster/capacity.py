"""A described capacity: the nodes a run (or a plan for one) has, each a dict of resources.

Tuning allocations asks "what fits where?" for a cluster a user may not have yet, so the
capacity is data, not a query to Ray: ``"4 nodes x {CPU: 16, GPU: 1}"`` on the command
line, a YAML file, ``ray.nodes()`` of a running cluster, or this machine's counts. Keys
are Ray's resource names (``CPU``, ``GPU``, ``memory`` in bytes, custom ones as given),
the same keys as :func:`orchestrator.placement.bundle`, so a group's demand can be set
against a node directly.

>>> Capacity.parse("1 x {CPU: 2} + 2 nodes x {CPU: 16, GPU: 1, memory: 64GiB}").describe()
'1 node x {CPU: 2} + 2 nodes x {CPU: 16, GPU: 1, memory: 64GiB}'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Node = Mapping[str, float]

_ALIASES = {"cpu": "CPU", "cpus": "CPU", "num_cpus": "CPU", "gpu": "GPU", "gpus": "GPU",
            "num_gpus": "GPU", "memory": "memory", "mem": "memory"}
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_TERM = re.compile(r"^\s*(?:(?P<count>[^\s{}]+)\s*(?:nodes?\s*)?[x×*]\s*)?\{(?P<body>[^{}]*)\}\s*$")
_AMOUNT = re.compile(r"^\s*(?P<num>[0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*(?P<unit>[A-Za-z]*)\s*$")
_RAY_BOOKKEEPING = ("node:", "accelerator_type:", "object_store_memory")


class CapacityError(ValueError):
    """A capacity description cannot be read; the message names the bad part."""


@dataclass(frozen=True)
class Capacity:
    """The nodes, in order: simulation places first-fit in this order, so it is part of
    the description (``ray.nodes()`` order for a running cluster)."""

    nodes: tuple[Node, ...]

    def __post_init__(self) -> None:
        if not self.nodes:
            raise CapacityError("a capacity needs at least one node")

    @classmethod
    def parse(cls, text: str) -> Capacity:
        """Read ``"COUNT [nodes] x {RESOURCE: AMOUNT, ...}"`` terms joined with ``+``."""
        nodes: list[Node] = []
        for term in text.split("+"):
            match = _TERM.match(term)
            if match is None:
                raise CapacityError(f"capacity {text!r}: cannot read {term.strip()!r}; expected "
                                    "'COUNT nodes x {CPU: 16, GPU: 1}' terms joined with '+'")
            count = _count(match["count"] or "1", f"capacity {text!r}: {term.strip()!r}")
            node = _node(_pairs(match["body"], f"capacity {text!r}: {term.strip()!r}"),
                         f"capacity {text!r}: {term.strip()!r}")
            nodes.extend([node] * count)
        return cls(tuple(nodes))

    @classmethod
    def from_yaml(cls, path: str | Path) -> Capacity:
        """A YAML list whose items are a node's resources or ``{count: N, resources: {...}}``."""
        where = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as exc:
            raise CapacityError(f"{where}: not valid YAML ({exc})") from exc
        if not isinstance(data, list) or not data:
            raise CapacityError(f"{where}: expected a non-empty list of nodes, got {type(data).__name__}")
        nodes: list[Node] = []
        for i, item in enumerate(data):
            at = f"{where}: item {i}"
            if not isinstance(item, dict):
                raise CapacityError(f"{at}: expected a mapping, got {item!r}")
            if "resources" in item:
                extra = sorted(set(item) - {"count", "resources"})
                if extra:
                    raise CapacityError(f"{at}: unknown keys {extra}; expected count and resources")
                if not isinstance(item["resources"], dict):
                    raise CapacityError(f"{at}: resources must be a mapping, got {item['resources']!r}")
                count, pairs = _count(str(item.get("count", 1)), at), item["resources"]
            else:
                count, pairs = 1, item
            nodes.extend([_node([(str(k), str(v)) for k, v in pairs.items()], at)] * count)
        return cls(tuple(nodes))

    @classmethod
    def from_spec(cls, spec: str) -> Capacity:
        """``--capacity``: a YAML file when ``spec`` names one, else a description to parse."""
        if spec.strip().endswith((".yaml", ".yml")) or Path(spec).is_file():
            if not Path(spec).is_file():
                raise CapacityError(f"capacity file {spec!r} does not exist")
            return cls.from_yaml(spec)
        return cls.parse(spec)

    @classmethod
    def from_ray_nodes(cls, nodes: Iterable[Mapping[str, Any]]) -> Capacity:
        """The alive nodes of ``ray.nodes()`` (passed in: this module never imports Ray),
        without Ray's bookkeeping entries (``node:<ip>``, object store, accelerator type)."""
        out = []
        for n in nodes:
            if not n.get("Alive", True):
                continue
            res = n.get("Resources", {})
            out.append({k: float(v) for k, v in res.items() if not k.startswith(_RAY_BOOKKEEPING)})
        if not out:
            raise CapacityError("the Ray cluster has no alive node")
        return cls(tuple(out))

    @classmethod
    def this_machine(cls, cpus: float, gpus: float = 0.0, memory: float | None = None) -> Capacity:
        """One node with this machine's counts (``memory`` in bytes, left out when unknown)."""
        node = {"CPU": float(cpus), "GPU": float(gpus)}
        if memory is not None:
            node["memory"] = float(memory)
        return cls((_clean(node),))

    def total(self) -> dict[str, float]:
        """Each resource summed over the nodes."""
        out: dict[str, float] = {}
        for node in self.nodes:
            for key, value in node.items():
                out[key] = out.get(key, 0.0) + value
        return out

    def largest(self, resource: str) -> float:
        """The most of ``resource`` any one node has (0 when none has it)."""
        return max(node.get(resource, 0.0) for node in self.nodes)

    def describe(self) -> str:
        """The capacity in the syntax :meth:`parse` reads, consecutive equal nodes grouped."""
        terms: list[tuple[int, Node]] = []
        for node in self.nodes:
            if terms and terms[-1][1] == node:
                terms[-1] = (terms[-1][0] + 1, node)
            else:
                terms.append((1, node))
        return " + ".join(f"{n} node{'s' if n > 1 else ''} x {format_resources(node)}"
                          for n, node in terms)


def format_amount(resource: str, value: float) -> str:
    """``value`` of ``resource`` as a person reads it: memory in GiB/MiB, counts plainly."""
    if resource == "memory" and value >= 2**20:
        unit, scale = ("GiB", 2**30) if value >= 2**30 else ("MiB", 2**20)
        return f"{value / scale:.4g}{unit}"
    return f"{value:g}"


def format_resources(node: Node) -> str:
    """``{CPU: 16, GPU: 1}``: CPU, GPU, memory first, then custom resources by name."""
    order = {"CPU": 0, "GPU": 1, "memory": 2}
    keys = sorted(node, key=lambda k: (order.get(k, 3), k))
    return "{" + ", ".join(f"{k}: {format_amount(k, node[k])}" for k in keys) + "}"


def _count(text: str, where: str) -> int:
    if not re.fullmatch(r"\d+", text.strip()) or int(text) < 1:
        raise CapacityError(f"{where}: the node count {text!r} must be a whole number >= 1")
    return int(text)


def _pairs(body: str, where: str) -> list[tuple[str, str]]:
    pairs = []
    for part in body.split(","):
        if not part.strip():
            raise CapacityError(f"{where}: empty entry between commas")
        key, sep, value = part.partition(":")
        if not sep or not key.strip():
            raise CapacityError(f"{where}: {part.strip()!r} is not 'RESOURCE: AMOUNT'")
        pairs.append((key.strip(), value.strip()))
    return pairs


def _node(pairs: list[tuple[str, str]], where: str) -> Node:
    node: dict[str, float] = {}
    for key, text in pairs:
        name = _ALIASES.get(key.lower(), key)
        if name in node:
            raise CapacityError(f"{where}: {name} is given twice")
        node[name] = _amount(name, text, where)
    if not any(node.values()):
        raise CapacityError(f"{where}: a node needs some resource above 0")
    return _clean(node)


def _amount(name: str, text: str, where: str) -> float:
    match = _AMOUNT.match(text)
    unit = match["unit"].lower() if match else None
    if match is None or unit not in _UNITS:
        raise CapacityError(f"{where}: '{name}: {text}' is not an amount (a number >= 0, memory "
                            "optionally with a unit such as 64GiB or 500MB)")
    return float(match["num"]) * _UNITS[unit]


def _clean(node: Mapping[str, float]) -> Node:
    return {k: float(v) for k, v in node.items() if v}
