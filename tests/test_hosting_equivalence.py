"""Pooled and dedicated hosting give the same parameters, dropout included (no Ray).

A dedicated participant is simulated by a :class:`Participant` with its own process's
global torch generator (swapped in around each of its calls); pooled participants share
one :class:`PoolWorker` whose cache is too small for all of them, served in a different
order each round, so each is evicted and set up again between its tasks. Both run a few
rounds of the real strategy, server half included, and must agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from conftest import train_together

from actors.participant.participant import Participant
from actors.participant.pool import PoolWorker
from actors.spec.data import DatasetSpec, PartitionData
from actors.spec.participant import ParticipantSpec
from actors.spec.training import TRAINED_TOGETHER, ModelSpec, TrainSpec
from strategies import build_strategy
from strategies.base import ServerContext
from strategies.partial import global_positions, shared_part, union_layout
from strategies.types import GlobalState, Instructions, Update

ROUNDS, SITES = 3, 3
Round = Callable[[GlobalState, list[Instructions], list[ParticipantSpec]], list[Update]]


def spec(index: int, strategy: str, dropout: float, state_dir) -> ParticipantSpec:
    return ParticipantSpec(
        name=f"site-{index}", group="site", index_in_group=index, seed=100 + index,
        model=ModelSpec(name="mlp", hidden=[16], dropout=dropout), data=PartitionData(),
        train=TrainSpec(local_steps=4, batch_size=16, lr=0.1), dataset=DatasetSpec(),
        partition_index=index, num_partitions=SITES, strategy=strategy,
        state_dir=str(state_dir / f"site-{index}"),
    )


class Dedicated:
    """One participant per simulated process: each keeps its own global torch generator,
    which it starts with as a fresh process would and which no other participant draws from."""

    def __init__(self) -> None:
        self.procs: dict[str, tuple[Participant, torch.Tensor]] = {}

    def round(self, state: GlobalState, instructions: list[Instructions], specs: list[ParticipantSpec]
              ) -> list[Update]:
        return [self._train(s, state, i) for s, i in zip(specs, instructions, strict=True)]

    def _train(self, s: ParticipantSpec, state: GlobalState, instructions: Instructions) -> Update:
        participant, own = self.procs.get(s.name) or (Participant(s), torch.Generator().get_state())
        outside = torch.get_rng_state()
        torch.set_rng_state(own)
        try:
            update = participant.train(state, instructions)
            self.procs[s.name] = (participant, torch.get_rng_state())
        finally:
            torch.set_rng_state(outside)
        return update


class Pooled:
    """One worker caching two of the three participants: every task of a round evicts one,
    and the order alternates, so each participant is set up again between its tasks."""

    def __init__(self, batched: bool) -> None:
        self.worker, self.batched, self.rounds = PoolWorker(cache_size=2), batched, 0

    def round(self, state: GlobalState, instructions: list[Instructions], specs: list[ParticipantSpec]
              ) -> list[Update]:
        self.rounds += 1
        order = list(range(len(specs)))[:: 1 if self.rounds % 2 else -1]
        if self.batched:  # the task threads of actors/participant/cohort.py
            got = train_together(self.worker, state, [instructions[i] for i in order], [specs[i] for i in order])
        else:
            got = [self.worker.train(specs[i], state, instructions[i]) for i in order]
        for g in got:
            if isinstance(g, Exception):
                raise g
        return [got[order.index(i)] for i in range(len(specs))]


def federate(host: Round, strategy: str, specs: list[ParticipantSpec]) -> tuple[np.ndarray, list[Update]]:
    """``ROUNDS`` rounds of ``strategy`` with its server half; the final global vector and
    every update."""
    server = build_strategy(strategy)
    probe = Participant(specs[0].model_copy(update={"state_dir": None}))
    layout, params = probe.layout, probe.initial_parameters()
    if server.global_state == "parts":  # FedRep: the global vector is the shared body
        shared = shared_part(layout, server.shares)
        params, layout = params[global_positions(layout, shared)], union_layout([shared])
    server.setup(ServerContext(layout, num_participants=len(specs)))
    updates: list[Update] = []
    for r in range(ROUNDS):
        state = GlobalState(r, params, layout, server.broadcast())
        instructions = [Instructions(task_id=10 * r + i, seed=1000 * r + i) for i in range(len(specs))]
        got = host.round(state, instructions, specs)
        params = server.aggregate(params, got)
        updates += got
    return params, updates


@pytest.mark.parametrize("dropout", [0.0, 0.5])
@pytest.mark.parametrize("strategy", ["fedavg", "scaffold", "fedrep", "ditto"])
def test_pooled_and_dedicated_give_the_same_parameters(tmp_path, strategy, dropout):
    def specs(where: str) -> list[ParticipantSpec]:
        return [spec(i, strategy, dropout, tmp_path / where) for i in range(SITES)]

    want, want_updates = federate(Dedicated(), strategy, specs("dedicated"))
    for batched in ([False, True] if dropout else [False]):
        got, got_updates = federate(Pooled(batched), strategy, specs(f"pool-{batched}"))
        np.testing.assert_array_equal(got, want)
        for a, b in zip(got_updates, want_updates, strict=True):
            assert (a.participant, a.task_id) == (b.participant, b.task_id)
            np.testing.assert_array_equal(a.payload, b.payload)
            assert a.extras.keys() == b.extras.keys()
            for key in a.extras:
                np.testing.assert_array_equal(a.extras[key], b.extras[key])
            assert a.metrics["train_loss"] == b.metrics["train_loss"]
            if batched:  # a dropout model trains alone, even in a batched pool
                assert a.metrics[TRAINED_TOGETHER] == 1.0
    assert all(np.abs(u.payload).sum() > 0 for u in want_updates)  # every task trained
