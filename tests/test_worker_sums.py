"""A pool worker's round in one call, its updates summed where they were trained
(actors/participant/summing.py, orchestrator/cluster/worker_sums.py): the same global
parameters as one call per task, for every strategy that uses it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import digits_config

from actors.participant.participant import Participant
from actors.participant.pool import PoolWorker
from actors.participant.summing import WorkerSum, sum_checked
from actors.spec.data import DatasetSpec, PartitionData
from actors.spec.participant import ParticipantSpec
from actors.spec.training import ModelSpec, TrainSpec
from orchestrator.cluster.worker_sums import aggregates_a_mean, combine, sums_in_workers
from orchestrator.config import load_config
from orchestrator.loop.run import Orchestrator
from strategies import STRATEGIES, build_strategy
from strategies.base import ServerContext
from strategies.types import GlobalState, Instructions, Layout, Update

SUMMED = sorted(name for name, cls in STRATEGIES.items() if aggregates_a_mean(cls))


def spec(index: int, strategy: str, state_dir) -> ParticipantSpec:
    return ParticipantSpec(
        name=f"site-{index}", group="site", index_in_group=index, seed=100 + index,
        model=ModelSpec(name="mlp", hidden=[16]), data=PartitionData(),
        train=TrainSpec(local_steps=3, batch_size=16, lr=0.1), dataset=DatasetSpec(partition={"kind": "dirichlet",
                                                                                            "alpha": 0.5}),
        partition_index=index, num_partitions=3, strategy=strategy, state_dir=str(state_dir / f"site-{index}"),
    )


@pytest.mark.parametrize("strategy", SUMMED)
def test_a_worker_round_sum_gives_the_per_task_aggregate(tmp_path, strategy):
    """Two rounds, each trained once per task and once as one worker round; the server
    halves (momentum, Adam moments) then step from the updates or from their sum."""
    specs = {way: [spec(i, strategy, tmp_path / way) for i in range(3)] for way in ("tasks", "round")}
    probe = Participant(specs["tasks"][0].model_copy(update={"state_dir": None}))
    layout, start = probe.layout, probe.initial_parameters()
    servers = {way: build_strategy(strategy) for way in specs}
    workers = {way: PoolWorker() for way in specs}
    params = {way: start for way in specs}
    for server in servers.values():
        server.setup(ServerContext(layout, num_participants=3))
    for r in range(2):
        instructions = [Instructions(task_id=10 * r + i, seed=1000 * r + i) for i in range(3)]
        states = {way: GlobalState(r, params[way], layout, servers[way].broadcast()) for way in specs}
        updates = [workers["tasks"].train(s, states["tasks"], i) for s, i in zip(specs["tasks"], instructions)]
        *summed, part = workers["round"].train_round(list(zip(specs["round"], instructions)), states["round"], None)
        assert [u.summed for u in summed] == [True] * 3 and all(u.payload.size == 0 for u in summed)
        assert [u.metrics["train_loss"] for u in summed] == pytest.approx([u.metrics["train_loss"] for u in updates])
        seen, left_out = combine(summed, [part])
        assert left_out == set() and seen[0].num_examples == sum(u.num_examples for u in updates)
        params["tasks"] = servers["tasks"].aggregate(params["tasks"], updates)
        params["round"] = servers["round"].aggregate(params["round"], seen)
        assert not np.array_equal(params["tasks"], start)
        np.testing.assert_allclose(params["round"], params["tasks"], rtol=1e-5, atol=1e-6)


def test_a_round_call_sends_back_a_failed_task_and_a_bad_update_as_they_are(tmp_path):
    """A participant that cannot train comes back as its exception, one whose update is
    not finite comes back whole (the driver records its rejection); neither is summed."""
    worker = PoolWorker()
    good = spec(0, "fedavg", tmp_path)
    wild = spec(1, "fedavg", tmp_path).model_copy(update={"train": TrainSpec(local_steps=3, lr=1e30)})
    unknown = "site-9"  # never registered: a worker restarted since the driver sent its spec
    probe = Participant(good.model_copy(update={"state_dir": None}))
    state = GlobalState(0, probe.initial_parameters(), probe.layout)
    tasks = [(good, Instructions(0, seed=0)), (wild, Instructions(1, seed=1)), (unknown, Instructions(2, seed=2))]
    done, blown, missing, part = worker.train_round(tasks, state, None)
    assert done.summed and not blown.summed and blown.payload.size == probe.layout.size
    assert not np.isfinite(blown.payload).all()
    assert type(missing).__name__ == "NotRegistered"
    assert part.task_ids == (0,) and part.examples == done.num_examples


def test_updates_are_clipped_before_they_are_summed():
    lay = Layout(("w",), ((2,),))
    ups = [Update("a", 0, "delta", np.array([3., 4.], np.float32), lay, 2, task_id=0),
           Update("b", 0, "delta", np.array([0., .5], np.float32), lay, 1, task_id=1)]
    part = sum_checked(ups, lay, clip_norm=1.0)
    np.testing.assert_allclose(part.total, [2 * .6, 2 * .8 + .5])


def test_a_sum_covering_an_update_the_driver_refused_is_left_out_whole():
    lay = Layout(("w",), ((1,),))
    summed = [Update(n, 0, "delta", np.zeros(0, np.float32), lay, 1, task_id=i, summed=True)
              for i, n in enumerate("ab")]
    parts = [WorkerSum(np.array([1.0]), 1, (0,)), WorkerSum(np.array([5.0]), 2, (1, 7))]  # task 7 was refused
    seen, left_out = combine(summed, parts)
    assert left_out == {1, 7} and seen[0].payload.tolist() == [1.0] and seen[0].num_examples == 1


@pytest.mark.parametrize(("change", "sums"), [
    ({}, True),
    ({"schedule": {"mode": "sync", "sum_in_workers": False}}, False),
    ({"schedule": {"mode": "buffered", "buffer_size": 2}}, False),
    ({"schedule": {"mode": "sync", "deadline_s": 5}}, False),
    ({"schedule": {"mode": "sync", "over_select": 0.5}}, False),
    ({"schedule": {"mode": "sync", "task_timeout_s": 60}}, False),
    ({"strategy": {"name": "median"}}, False),
    ({"strategy": {"name": "scaffold"}}, False),
    ({"strategy": {"name": "fedadam"}}, True),
])
def test_which_runs_sum_in_their_workers(change, sums):
    assert sums_in_workers(load_config(digits_config(**change)), private=False) is sums
    assert not sums_in_workers(load_config(digits_config(**change)), private=True)
    assert not sums_in_workers(load_config(digits_config("dedicated", **change)), private=False)


def test_a_pooled_run_gives_the_same_model_summed_in_its_workers_as_task_by_task(ray_session, tmp_path):
    """On Ray, end to end: batched and unbatched workers, clipping, one history row per task."""
    finals, histories = {}, {}
    for sums in (True, False):
        config = digits_config(stop={"max_aggregations": 4}, updates={"clip_norm": 0.5},
                               schedule={"mode": "sync", "sum_in_workers": sums})
        config["groups"][0] |= {"count": 6, "workers": 2}
        config["groups"].append({**config["groups"][0], "name": "batched", "count": 4, "batched": True})
        out = tmp_path / str(sums)
        histories[sums] = Orchestrator(load_config(config), out_dir=out).run()
        finals[sums] = np.load(out / "global_params.npy")
    np.testing.assert_allclose(finals[True], finals[False], rtol=1e-4, atol=1e-6)
    for sums, history in histories.items():
        updates = history[history.event == "update"]
        assert len(updates) == 4 * 10 and updates.groupby("version").size().tolist() == [10] * 4
        assert bool((updates.bytes == 0).all()) == sums  # the payloads stayed in the workers
