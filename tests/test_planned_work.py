"""The work a task plans: each strategy's client half declares the samples it processes,
which under the simulated clock is the task's duration (no Ray: plain participants)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import digits_config

from actors.participant.participant import Participant
from actors.spec.data import DatasetSpec, PartitionData
from actors.spec.participant import ParticipantSpec
from actors.spec.training import ModelSpec, TrainSpec
from orchestrator.cluster.members import Member
from orchestrator.cluster.specs import participant_specs
from orchestrator.config import load_config
from orchestrator.loop.run import Orchestrator
from strategies.client import Plan, Work
from strategies.types import GlobalState, Instructions

STRATEGIES = [("fedavg", {}), ("scaffold", {}), ("ditto", {"personal_epochs": 2}), ("fedper", {}),
              ("fedrep", {"head_epochs": 2}), ("fedsgd", {}), ("fedmd", {"distill_epochs": 3})]


@pytest.mark.parametrize("steps", [None, 3])
@pytest.mark.parametrize(("strategy", "options"), STRATEGIES, ids=[s for s, _ in STRATEGIES])
def test_the_planned_samples_are_the_samples_the_client_half_processes(strategy, options, steps):
    public = 40
    spec = ParticipantSpec(
        name="site-0", group="site", index_in_group=0, seed=3, model=ModelSpec(name="mlp", hidden=[8]),
        data=PartitionData(), train=TrainSpec(local_epochs=2, local_steps=steps, batch_size=16, lr=0.1),
        dataset=DatasetSpec(public_size=public), partition_index=0, num_partitions=4,
        strategy=strategy, strategy_options=options,
    )
    p = Participant(spec)
    initial = p.initial_parameters()
    if strategy == "fedmd":  # its global state is consensus logits on the public set
        initial = np.zeros(public * 10, np.float32)
        layout = type(p.layout)(("logits",), ((public, 10),))
    else:
        layout = p.layout
    update = p.train(GlobalState(1, initial, layout), Instructions(task_id=0, seed=1))
    plan = Plan(Work(1, 2, steps), 16, p.local.num_examples, public, version=1)
    distilled = 3 * public if strategy == "fedmd" else 0  # its metrics count the private samples only
    assert p.client.planned_samples(plan) == update.metrics["samples"] + distilled


def test_simulated_durations_follow_each_strategys_planned_work():
    def seconds(strategy: str, options: dict | None = None, version: int = 1) -> float:
        group = {"name": "site", "count": 2, "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.1},
                 "system": {"simulated_seconds_per_sample": 0.01}}
        raw = digits_config(groups=[group], clock="simulated", strategy={"name": strategy, **(options or {})})
        if strategy == "fedmd":
            raw["dataset"]["public_size"] = 50
        orch = Orchestrator(load_config(raw))
        spec = participant_specs(orch.config, orch.run_id)[0][0]
        member = Member(spec.name, "site", 0, None, spec, 0, info={"num_examples": 100})
        return orch.participants.simulated_seconds(member, None, 0, version)

    assert seconds("fedavg") == pytest.approx(1.0)  # 100 samples x 0.01 s
    assert seconds("ditto") == pytest.approx(2.0)  # the personal pass, then the global one
    assert seconds("fedrep", {"head_epochs": 2}) == pytest.approx(3.0)  # two head epochs, one body epoch
    assert seconds("fedsgd") == pytest.approx(0.32)  # one batch's gradient
    assert seconds("fedmd") == pytest.approx(2.0)  # 2 distill epochs on 50 public examples, then training
    assert seconds("fedmd", version=0) == pytest.approx(1.0)  # no consensus yet: nothing to distill
