"""The contract every aggregation strategy follows.

A strategy decides *how* a batch of updates becomes the next global parameters; the
orchestrator's schedule decides *when* that happens. Keeping the two apart lets every
strategy run under synchronous rounds, FedBuff and FedAsync alike.

Each strategy is one small class with a ``Params`` dataclass of hyperparameters (the
config validates YAML against it), a pure ``aggregate`` (numbers in, numbers out, no Ray)
and a ``Client`` class, its client half, that the participant runs for each task (see
``strategies/client.py``). Server-side optimizer state (momentum, Adam moments, SCAFFOLD's
control variate) lives in ``self.state`` so it is checkpointed with :meth:`state_dict`.
What a strategy needs and sends is declared on the class.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from strategies.client import Client, WeightsClient
from strategies.types import Layout, PayloadKind, Sharing, Update

GlobalKind = Literal["weights", "parts", "families", "logits"]
"""What the global vector is: one architecture's parameters (``weights``), the union of
the shared parameters matched by name and shape (``parts``), one model per architecture
family under ``fK/`` prefixes (``families``), or consensus logits on the public set."""


@dataclass(frozen=True)
class NoParams:
    """For strategies without hyperparameters."""


class ServerModels(Protocol):
    """Models the server half can run, for strategies that do model work on the server
    (FedDF's ensemble distillation). Implemented in ``orchestrator/server/server_models.py``; the
    driver builds one only for strategies that declare ``needs_server_models``."""

    prefixes: tuple[str, ...]
    """One per architecture family, in the global layout's order."""

    def layout(self, prefix: str) -> Layout: ...

    def logits(self, prefix: str, vector: np.ndarray) -> np.ndarray:
        """That family's model with parameters ``vector``, predicting the public set."""
        ...

    def distill(self, prefix: str, vector: np.ndarray, teacher: np.ndarray, temperature: float,
                epochs: int, lr: float, seed: int) -> np.ndarray:
        """Start from ``vector``, fit ``teacher``'s soft labels, return the new vector."""
        ...


@dataclass
class ServerContext:
    """What a strategy's server half learns once, before the first aggregation."""

    layout: Layout
    """The global vector's layout."""
    num_participants: int
    models: ServerModels | None = None
    seed: int = 0


class Strategy:
    """Base class: subclasses set ``name``, ``Params`` and implement ``aggregate``.

    Capabilities are declared here, once, as class attributes; config validation, the
    global state and the participant read them instead of guessing from option names.
    """

    name: ClassVar[str]
    Params: ClassVar[type] = NoParams
    Client: ClassVar[type[Client]] = WeightsClient
    """The client half: what a participant does with each task."""
    payload: ClassVar[PayloadKind] = "delta"
    """What each update carries."""
    global_state: ClassVar[GlobalKind] = "weights"
    shares: ClassVar[Sharing] = "all"
    """Which of a participant's parameters travel (partial sharing sends fewer)."""
    needs_public_set: ClassVar[bool] = False
    """Distills on the run's unlabelled public set (``dataset.public_size``)."""
    needs_server_models: ClassVar[bool] = False
    """Runs models on the server (gets ``ServerContext.models``)."""
    needs_individual_updates: ClassVar[bool] = False
    """True for rules that inspect each update (median, Krum): secure aggregation and
    DP-FedAvg hand them one combined update instead, so the config refuses the pairing."""
    supports_private_aggregation: ClassVar[bool] = True
    """Whether its updates can be summed under secure aggregation or DP-FedAvg: one
    layout for all, nothing beside the payload."""
    supports_dp_sgd: ClassVar[bool] = True
    """Whether its client half is plain local training that local DP-SGD can replace."""
    update_extras: ClassVar[tuple[str, ...]] = ()
    """Names of the vectors each update carries beside its payload (``Update.extras``),
    each of the payload's size; the driver rejects updates without them."""

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()
        self.state: dict[str, np.ndarray] = {}
        self.context: ServerContext | None = None

    def setup(self, context: ServerContext) -> None:
        """Called once by the driver before the first aggregation."""
        self.context = context

    def aggregate(self, global_params: np.ndarray, updates: Sequence[Update]) -> np.ndarray:
        """Return the next global parameter vector; must not modify its inputs."""
        raise NotImplementedError

    def broadcast(self) -> dict[str, np.ndarray]:
        """What the client halves need besides the parameters (``GlobalState.extra``)."""
        return {}

    def client(self) -> Client:
        """A fresh client half for one participant."""
        return self.Client(self)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.state = {k: np.array(v, dtype=np.float32) for k, v in state.items()}

    @classmethod
    def heterogeneous(cls) -> bool:
        """Whether participants may run different architectures under this strategy."""
        return cls.global_state != "weights"


BLOCK = 1 << 18
"""Columns handled at a time by the blocked helpers: small enough that a block of the
running sum stays in cache, large enough that the Python loop over blocks is noise."""


def schedule_weights(updates: Sequence[Update]) -> np.ndarray:
    """Each update's schedule multiplier (staleness discount), as float64."""
    return np.array([u.weight for u in updates], dtype=np.float64)


def weighted_sum(payloads: Sequence[np.ndarray], coef: np.ndarray) -> np.ndarray:
    """``sum_i coef[i] * payloads[i]`` as float32, without stacking the payloads.

    ``np.stack`` would copy every payload once more before the sum reads it again; here
    each payload is read once, block by block, into a running sum that stays in cache.
    That keeps FedAvg at the speed of a plain ``np.mean`` over a ready-made matrix.
    """
    if not payloads:
        raise ValueError("cannot aggregate an empty batch of updates")
    size = payloads[0].size
    coef32 = np.asarray(coef, dtype=np.float32)
    out = np.empty(size, dtype=np.float32)
    scratch = np.empty(min(BLOCK, size), dtype=np.float32)
    for start in range(0, size, BLOCK):
        stop = min(size, start + BLOCK)
        acc, tmp = out[start:stop], scratch[: stop - start]
        np.multiply(payloads[0][start:stop], coef32[0], out=acc)
        for c, payload in zip(coef32[1:], payloads[1:]):
            np.multiply(payload[start:stop], c, out=tmp)
            acc += tmp
    return out


def column_blocks(payloads: Sequence[np.ndarray]) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(columns, matrix)``: the payloads stacked, one block of columns at a time.

    Coordinate-wise statistics (median, trimmed mean) need all payloads side by side but
    only one column at a time, so they never need the whole ``n x size`` copy in memory.
    The matrix is a reused buffer: consume it before asking for the next block.
    """
    size = payloads[0].size
    buf = np.empty((len(payloads), min(BLOCK, size)), dtype=np.float32)
    for start in range(0, size, BLOCK):
        stop = min(size, start + BLOCK)
        block = buf[:, : stop - start]
        for row, payload in zip(block, payloads):
            row[...] = payload[start:stop]
        yield slice(start, stop), block


def weighted_mean(updates: Sequence[Update]) -> np.ndarray:
    """Example-weighted mean of the payloads, each scaled by its schedule weight.

    The normaliser is the plain example count, not the count times the weight: a stale
    update discounted by ``s(staleness)`` must pull the model less, not be renormalised
    back up (FedBuff, Nguyen et al. 2022, Alg. 1). With every weight 1 this is FedAvg's
    example-weighted average. Vectorised per payload (see :func:`weighted_sum`): no
    Python loop over tensors.
    """
    if not updates:
        raise ValueError("cannot aggregate an empty batch of updates")
    counts = np.array([u.num_examples for u in updates], dtype=np.float64)
    if counts.sum() <= 0:
        counts = np.ones_like(counts)
    coef = counts * schedule_weights(updates) / counts.sum()
    return weighted_sum([u.payload for u in updates], coef)
