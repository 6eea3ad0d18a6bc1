"""``batched: auto``: a pool worker measures its participants trained together against one
at a time, and the driver batches that worker's tasks only where together was faster."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import digits_config

from actors.participant.batching_probe import FIRST_BATCHED_S, HANDOVER_S, MARGIN, Probe
from actors.participant.pool import PoolWorker
from actors.spec.data import DatasetSpec, PartitionData
from actors.spec.participant import ParticipantSpec
from actors.spec.training import DPSGD, ModelSpec, TrainSpec
from orchestrator.config import load_config
from orchestrator.loop.run import Orchestrator


def test_together_wins_only_by_more_than_the_margin_after_the_hand_over():
    """Per task: the measured seconds scaled from the measured steps to a task's, plus the
    hand-over for training together, against the margin."""
    clear = Probe(copies=4, steps=2, together_s=0.004, alone_s=0.008, task_steps=2)
    assert clear.per_task() == pytest.approx((0.001 + HANDOVER_S, 0.002))
    assert clear.batches
    eaten = Probe(copies=4, steps=2, together_s=0.0065, alone_s=0.008, task_steps=2)  # faster, not after the hand-over
    assert eaten.per_task()[0] > MARGIN * eaten.per_task()[1] and not eaten.batches
    longer = Probe(copies=4, steps=2, together_s=0.0065, alone_s=0.008, task_steps=20)  # the hand-over matters less
    assert longer.batches
    assert "together:" in clear.line() and "one at a time:" in eaten.line()
    refused = Probe(copies=4, why_not="dropout in train mode")
    assert not refused.batches and refused.line() == "one at a time: dropout in train mode"


def spec(index: int, tmp_path, **train) -> ParticipantSpec:
    return ParticipantSpec(
        name=f"site-{index}", group="site", index_in_group=index, seed=index,
        model=ModelSpec(name="mlp", hidden=[16]), data=PartitionData(),
        train=TrainSpec(lr=0.1, batch_size=32, **train), dataset=DatasetSpec(),
        partition_index=index, num_partitions=4, strategy="fedavg", state_dir=str(tmp_path / f"site-{index}"))


def test_a_measurement_changes_no_participant_and_no_global_generator(tmp_path):
    """The worker trains copies: its participants' weights and torch's global generator are
    as they were, and each participant's first update is the one it gives unmeasured."""
    from strategies.types import GlobalState, Instructions

    measured, plain = PoolWorker(), PoolWorker()
    specs = [spec(i, tmp_path) for i in range(3)]
    for worker in (measured, plain):
        worker.describe_each(specs)
    weights = [measured.initial_parameters(s.name) for s in specs]
    generator = torch.get_rng_state()
    probe = measured.probe_batching([s.name for s in specs], None)
    assert probe.why_not is None and probe.copies == 3
    assert math.isfinite(probe.together_s) and probe.together_s > 0 and probe.alone_s > 0
    assert all(np.array_equal(w, measured.initial_parameters(s.name)) for w, s in zip(weights, specs))
    assert torch.equal(generator, torch.get_rng_state())
    layout = measured.describe(specs[0])["layout"]
    state = GlobalState(0, weights[0], layout)
    after = measured.train(specs[1].name, state, Instructions(task_id=0, seed=5))
    unmeasured = plain.train(specs[1].name, state, Instructions(task_id=0, seed=5))
    np.testing.assert_array_equal(after.payload, unmeasured.payload)


def test_a_worker_does_not_measure_what_cannot_train_together_or_could_not_repay_it(tmp_path):
    worker = PoolWorker()
    private = [spec(i, tmp_path / "dp", dp_sgd=DPSGD(noise_multiplier=1.0, max_grad_norm=1.0)) for i in range(2)]
    plain = [spec(i, tmp_path / "plain") for i in range(2)]
    worker.describe_each(private)
    assert "DP-SGD" in worker.probe_batching([s.name for s in private], None).why_not
    worker.reset()
    worker.describe_each(plain)
    assert worker.probe_batching([plain[0].name], None).why_not == "fewer than two participants train at once"
    short = worker.probe_batching([s.name for s in plain], tasks=4)  # two tasks each: the measuring would cost more
    assert not short.batches and "too little to repay measuring" in short.why_not
    # they could train together, so the cost counts the untimed first batched step as well
    assert float(short.why_not.rsplit("(", 1)[1].rstrip("s)")) >= FIRST_BATCHED_S


def test_one_at_a_time_runs_on_the_thread_count_the_measurement_found_faster(tmp_path, monkeypatch):
    """Asked for two torch threads, a worker also times one at a time on one thread and keeps
    whichever was faster for that architecture; training alone then sets that count in its
    thread, and training together the group's."""
    from actors.training import threads

    monkeypatch.setattr(threads, "_ALONE", {})
    used: list[int] = []
    use = threads.use
    monkeypatch.setattr(threads, "use", lambda count: (used.append(count), use(count)))
    worker = PoolWorker()
    specs = [spec(i, tmp_path).model_copy(update={"num_threads": 2}) for i in range(2)]
    worker.describe_each(specs)
    probe = worker.probe_batching([s.name for s in specs], None)
    local = worker._served[specs[0].name].local
    assert threads.alone(local) == (1 if probe.alone_threads else 2)
    assert ("on 1 torch thread" in probe.line()) == bool(probe.alone_threads)
    assert used[0] == 2 and (1 in used) and used[-1] == 2  # timed on the group's, on one, then back

    threads.prefer_alone(local, 1)
    used.clear()
    from strategies.types import GlobalState, Instructions

    state = GlobalState(0, worker.initial_parameters(specs[0].name), local.layout)
    worker.train(specs[0].name, state, Instructions(task_id=0, seed=1))
    assert used == [1]
    used.clear()
    *updates, _ = worker.train_round([(s.name, Instructions(task_id=1 + i, seed=i)) for i, s in enumerate(specs)],
                                     state, None, cohort=(1, 2))
    assert [u.metrics["batched"] for u in updates] == [2.0, 2.0] and used == [2]


def test_a_group_that_does_not_batch_still_measures_one_thread_when_it_asks_for_more(tmp_path, monkeypatch):
    """``batched: false`` with two torch threads asked for: nothing is trained together, but
    one at a time is timed on the group's threads and on one, and the faster kept."""
    from actors.training import threads

    monkeypatch.setattr(threads, "_ALONE", {})
    worker = PoolWorker()
    specs = [spec(i, tmp_path).model_copy(update={"num_threads": 2}) for i in range(2)]
    worker.describe_each(specs)
    probe = worker.probe_batching([specs[0].name], None, together=False)
    assert probe.why_not == "batched: false" and not probe.batches
    assert math.isnan(probe.together_s) and probe.alone_s > 0
    assert probe.line().startswith("one at a time (batched: false): 1 participants' models, ")
    assert threads.alone(worker._served[specs[0].name].local) == (1 if probe.alone_threads else 2)
    one_thread = [spec(2, tmp_path)]  # asks for one thread: with nothing to train together, nothing to time
    worker.describe_each(one_thread)
    assert worker.probe_batching([one_thread[0].name], None, together=False).line() == "one at a time: batched: false"


def _run(batched, **stop) -> pd.DataFrame:
    group = {**digits_config()["groups"][0], "count": 6, "workers": 2, "batched": batched}
    return Orchestrator(load_config(digits_config(groups=[group], stop=stop))).run()


def test_each_worker_batches_as_its_measurement_says(ray_session):
    """Over 20 rounds (each participant's 20 tasks repay measuring), each worker measures;
    its participants' updates then trained together exactly where its measurement said so,
    and nowhere under ``batched: false``."""
    history = _run("auto", max_aggregations=20)
    verdicts = history[history.event == "batching"]
    assert len(verdicts) == 2 and verdicts.group.eq("site").all()
    updates = history[history.event == "update"]
    assert len(updates) > 0
    for _, verdict in verdicts.iterrows():
        ends = f"{verdict.participant} and 2 more: together:" in verdict.detail
        same_worker = [f"site-{i}" for i in range(6) if i % 2 == int(verdict.participant.split("-")[1]) % 2]
        mine = updates[updates.participant.isin(same_worker)]
        assert (mine.batched > 1).all() if ends else (mine.batched == 1).all(), verdict.detail
    off = _run(False, max_aggregations=3)  # one torch thread each (num_cpus 0.5): nothing to measure
    assert not (off.event == "batching").any() and (off[off.event == "update"].batched == 1).all()
