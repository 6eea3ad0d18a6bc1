"""Issue 23's W1 workload as the peer scripts build it (``peers_pfl.py``, ``peers_flower.py``):
torch, numpy and scikit-learn only, no fedray and no framework.

Digits (scikit-learn's bundled copy, pixels / 16), 20% of the rows held out with a fixed
seed, the rest split over the participants by a Dirichlet(0.5) label partition or iid, and
an MLP of the shape fedray's ``mlp`` with ``hidden: [64, 128]`` builds (64-64-128-10).
"""

from __future__ import annotations

import argparse
import functools

import numpy as np
import torch
from sklearn.datasets import load_digits


class MLP(torch.nn.Module):
    """64-64-128-10 with ReLUs."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 128),
                                       torch.nn.ReLU(), torch.nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def split(labels: np.ndarray, participants: int, iid: bool, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices per participant: iid shards, or per class a Dirichlet(0.5) share each."""
    if iid:
        return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), participants)]
    parts: list[list[int]] = [[] for _ in range(participants)]
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        cuts = (np.cumsum(rng.dirichlet([0.5] * participants)) * len(rows)).astype(int)[:-1]
        for part, chunk in zip(parts, np.split(rows, cuts), strict=True):
            part.extend(chunk.tolist())
    return [np.sort(np.asarray(p, dtype=int)) for p in parts]


@functools.cache
def w1_data(participants: int, iid: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """``(x, y, test rows, {participant: its training rows})``, the same in every process
    (seeded); participants a Dirichlet draw left empty are not in the dict. Loaded once per
    process (Flower makes a client for every message); callers only read it."""
    rng = np.random.default_rng(0)
    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
    order = rng.permutation(len(y))
    test, train = order[: len(y) // 5], order[len(y) // 5:]
    shards = {i: train[rows] for i, rows in enumerate(split(y[train], participants, iid, rng))}
    return x, y, test, {i: rows for i, rows in shards.items() if len(rows)}


def workload_args(description: str, namespace: argparse.Namespace | None = None) -> argparse.Namespace:
    """The command line both peer scripts take: the workload's size and split."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--participants", type=int, required=True)
    parser.add_argument("--per-round", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--iid", action="store_true")
    return parser.parse_args(namespace=namespace)
