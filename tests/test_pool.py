"""Pooled hosting: a few worker processes serve many participants, each still a participant
with its own data and private state."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
import ray
from conftest import digits_config, run_while, train_together

from actors.participant import private_state
from actors.participant.pool import PoolWorker
from actors.spec.data import DatasetSpec, PartitionData
from actors.spec.participant import ParticipantSpec
from actors.spec.training import DPSGD, ModelSpec, TrainSpec
from orchestrator.cluster.members import RESTART_BACKOFF_S
from orchestrator.config import ConfigError, load_config
from orchestrator.loop.run import Orchestrator
from strategies import STRATEGIES
from strategies.partial import global_positions, union_layout
from strategies.types import GlobalState, Instructions


def spec(index: int, state_dir, strategy: str = "fedrep", **train) -> ParticipantSpec:
    return ParticipantSpec(
        name=f"site-{index}", group="site", index_in_group=index, seed=index,
        model=ModelSpec(name="mlp", hidden=[16]), data=PartitionData(),
        train=TrainSpec(lr=0.1, batch_size=32, **train), dataset=DatasetSpec(),
        partition_index=index, num_partitions=4, strategy=strategy,
        state_dir=str(state_dir / f"site-{index}"),
    )


def full_state(worker: PoolWorker, s: ParticipantSpec, version: int = 0) -> GlobalState:
    layout = worker.describe(s)["layout"]
    return GlobalState(version, worker.initial_parameters(s.name), layout)


def test_the_cache_keeps_the_most_recent_participants_within_its_bound(tmp_path):
    worker = PoolWorker(cache_size=2)
    specs = [spec(i, tmp_path, "fedavg") for i in range(3)]
    for s in specs:
        worker.describe(s)
    assert worker.cached() == ["site-1", "site-2"]  # site-0, least recently served, went
    worker.describe(specs[1])
    assert worker.cached() == ["site-2", "site-1"]


def test_a_personal_head_survives_being_served_by_another_worker(tmp_path):
    s = spec(0, tmp_path, "fedrep")
    first, second = PoolWorker(), PoolWorker()
    layout = first.describe(s)["layout"]
    shared = layout.subset([n for n in layout.names if n.startswith("body.")])
    start = first.initial_parameters(s)[global_positions(layout, shared)]
    first.train(s, GlobalState(0, start, union_layout([shared])), Instructions(0, seed=1))
    head = first._served["site-0"].client.state["model"]
    assert not np.array_equal(head, first.initial_parameters(s))  # the task trained it
    second.describe(s)  # another process sets the participant up from its state directory
    np.testing.assert_array_equal(second._served["site-0"].client.state["model"], head)


def test_a_dp_sgd_budget_keeps_counting_on_another_worker(tmp_path):
    s = spec(1, tmp_path, "fedavg", dp_sgd=DPSGD(noise_multiplier=1.0, max_grad_norm=1.0))
    first = PoolWorker()
    spent = [first.train(s.name, full_state(first, s), Instructions(t, seed=t)).metrics["dp_sgd_epsilon"]
             for t in range(2)]
    second = PoolWorker()
    after = second.train(s.name, full_state(second, s), Instructions(2, seed=2)).metrics["dp_sgd_epsilon"]
    assert 0 < spent[0] < spent[1] < after  # the third task adds to the first two, not to zero


def test_bad_hosting_settings_are_refused_with_the_field():
    raw = digits_config()
    raw["groups"][0] |= {"hosting": "dedicated", "workers": 2}
    with pytest.raises(ConfigError, match=r"groups\[0\]: workers is a pool setting"):
        load_config(raw)
    raw["groups"][0] |= {"hosting": "pool", "workers": 9}
    with pytest.raises(ConfigError, match="workers=9 exceeds the group's 4 participants"):
        load_config(raw)
    raw["groups"][0] |= {"hosting": "pooled", "workers": 2}
    with pytest.raises(ConfigError, match=r"hosting: Input should be 'auto', 'dedicated' or 'pool'"):
        load_config(raw)
    raw["groups"][0] |= {"hosting": "pool", "cache_size": 0}
    with pytest.raises(ConfigError, match=r"groups\[0\].cache_size: Input should be greater than or equal to 1"):
        load_config(raw)


def _config(hosting: str, rounds: int = 3, **extra) -> dict:
    raw = digits_config(stop={"max_aggregations": rounds}, **extra)
    raw["groups"][0]["hosting"] = hosting
    if hosting == "pool":
        raw["groups"][0]["workers"] = 2
    return raw


def test_pooled_and_dedicated_hosting_give_the_same_model(ray_session):
    """Bit for bit, task by task; summed in the workers the sums differ in rounding only
    (test_worker_sums.py)."""
    runs = {}
    for hosting in ("dedicated", "pool"):
        orch = Orchestrator(load_config(_config(hosting, schedule={"mode": "sync", "sum_in_workers": False})))
        orch.run()
        runs[hosting] = (orch.params.copy(), {m.info["pid"] for m in orch.members.values()})
    np.testing.assert_array_equal(runs["dedicated"][0], runs["pool"][0])
    assert len(runs["dedicated"][1]) == 4 and len(runs["pool"][1]) == 2  # 4 participants, 2 processes


def test_batched_pool_training_gives_the_same_model_as_one_at_a_time(ray_session):
    """Two workers, two participants each: with ``batched: true`` each worker trains its
    two tasks as one vmapped computation (the history's ``batched`` column says 2), and
    the global model equals the one trained one participant at a time, and dedicated."""
    runs = {}
    for batched in (False, True):
        raw = _config("pool")
        raw["groups"][0]["batched"] = batched
        orch = Orchestrator(load_config(raw))
        history = orch.run()
        runs[batched] = orch.params.copy()
        updates = history[history.event == "update"]
        assert set(updates.batched) == ({2.0} if batched else {1.0}), updates.batched.value_counts()
    np.testing.assert_allclose(runs[True], runs[False], rtol=0, atol=1e-5)


class WaitForRestart:
    """A progress listener that, at the first aggregation after the killed worker's tasks
    failed, holds the run loop until Ray has restarted the worker and every back-off has
    passed, so the rest of the run shows the worker's participants going on (whatever the
    machine's speed)."""

    def __init__(self, orch: Orchestrator) -> None:
        self.orch, self.killed, self.failed, self.resumed_at = orch, None, False, None

    def on_event(self, row: dict) -> None:
        if self.killed is None or self.resumed_at is not None:
            return
        if row["event"] == "failure" and self.orch.members[row["participant"]].handle is self.killed:
            self.failed = True
        if row["event"] != "aggregation" or not self.failed:
            return
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # calls fail at once until the new process is up
            try:
                site = self.orch.members["site-0"]
                ray.get(site.handle.describe.remote(site.spec), timeout=120)  # the spec: a probe the driver does not see
                break
            except ray.exceptions.RayActorError:
                time.sleep(0.2)
        time.sleep(RESTART_BACKOFF_S)
        self.resumed_at = row["version"]

    def close(self) -> None:
        pass


@pytest.mark.parametrize("strategy", ["fedrep", "fedavg"])  # a call per task; one summed call per worker
def test_a_killed_pool_worker_comes_back_and_its_participants_go_on(ray_session, strategy):
    config = load_config(_config("pool", rounds=8, strategy={"name": strategy}))
    orch = Orchestrator(config)
    orch.progress = waiter = WaitForRestart(orch)

    def kill_once() -> bool:
        if orch.version >= 2:
            waiter.killed = orch.members["site-0"].handle  # serves site-0 and site-2
            ray.kill(waiter.killed, no_restart=False)  # a real crash; Ray restarts the worker
            return True
        return False

    history = run_while(orch, kill_once)
    assert orch.participants.sums.on == (strategy == "fedavg")
    assert np.isfinite(orch.params).all()
    assert waiter.resumed_at is not None, "no task of the killed worker failed"
    assert (history.event == "aggregation").sum() == 8
    assert (history.event == "participant_lost").sum() == 0
    served = history[(history.event == "update") & (history.version > waiter.resumed_at)]
    assert {"site-0", "site-2"} <= set(served.participant)  # served again by the new process


def _strategy_config(name: str, batched: bool) -> dict:
    cls = STRATEGIES[name]
    group = {"name": "site", "count": 3, "hosting": "pool", "workers": 1, "batched": batched,
             "model": {"name": "mlp", "hidden": [16]}, "train": {"local_steps": 2, "batch_size": 16, "lr": 0.1},
             "resources": {"num_cpus": 0.5}}
    dataset = {"name": "digits", "partition": {"kind": "iid"}, "public_size": 100 if cls.needs_public_set else 0}
    return digits_config(groups=[group], dataset=dataset, strategy={"name": name}, stop={"max_aggregations": 2})


@dataclass
class _Pooled:
    """A pooled participant as the driver's global-state code sees it (name, group, spec,
    description, ``call``), served by a :class:`PoolWorker` in this process; ``call`` puts
    the result in Ray's object store, as a remote call would."""

    name: str
    group: str
    spec: ParticipantSpec
    worker: PoolWorker
    info: dict = field(default_factory=dict)
    pooled: bool = True  # in this process: described without a node, so the driver evaluates

    def call(self, method: str, *args):
        return ray.put(getattr(self.worker, method)(self.name, *args))


def _assert_strategy_runs_pooled(name: str, batched: bool) -> None:
    """Two aggregations of ``name``'s real server half over three participants served by
    one pool worker (the driver's checks and global state included), each round's tasks
    sent as one cohort when ``batched``; the claims of the Ray run below."""
    from orchestrator.cluster.specs import participant_specs
    from orchestrator.server.global_state import build_global_model
    from strategies.hygiene import rejection_reason

    cls = STRATEGIES[name]
    config = load_config(_strategy_config(name, batched))
    worker = PoolWorker()
    specs = [s for s, _ in participant_specs(config, "run")]
    worker.register(specs)
    members = [_Pooled(s.name, s.group, s, worker) for s in specs]
    for m in members:
        m.info = worker.describe(m.name)
    strategy = config.strategy.build()
    model = build_global_model(config, members, strategy)
    params, updates = model.params, []
    for version in range(2):
        state = GlobalState(version, params, model.layout, strategy.broadcast())
        instructions = [Instructions(task_id=3 * version + i, seed=i) for i in range(3)]
        if batched:
            got = train_together(worker, state, instructions, [s.name for s in specs])
        else:
            got = [worker.train(s.name, state, i) for s, i in zip(specs, instructions, strict=True)]
        for update in got:
            assert not isinstance(update, Exception), update
            assert rejection_reason(update, model.expected_layout(update.participant), strategy.update_extras) is None
            model.observe(update)
        params = strategy.aggregate(params, got)
        assert params.shape == state.params.shape and np.isfinite(params).all()
        model.evaluate(params)
        updates += got
    assert {u.participant for u in updates} == {"site-0", "site-1", "site-2"}
    together = [u.metrics.get("batched") for u in updates]
    if cls.payload != "gradient":  # every update that trained says with how many (FedSGD does not train)
        assert None not in together, together
        assert batched or set(together) == {1.0}
    if batched and name in ("fedavg", "fedadam", "median"):  # plain local training: together
        assert set(together) == {3.0}
    if batched and name in ("fedprox", "scaffold"):  # a loss term: one at a time, and it says so
        assert set(together) == {1.0}


@pytest.mark.parametrize("batched", [False, True], ids=["one_at_a_time", "batched"])
@pytest.mark.parametrize("name", sorted(STRATEGIES))  # every registered strategy, new ones too
def test_every_strategy_runs_on_pooled_participants(ray_session, name, batched):
    """Batched: each strategy's client half trains through the worker's cohort, together
    where its local step batches and one at a time where it does not (loss terms, a
    frozen part, gradients), and the updates say which. In this process: the Ray run
    below shows the same path end to end."""
    _assert_strategy_runs_pooled(name, batched)


def test_a_batched_pool_run_through_ray_says_which_tasks_trained_together(ray_session):
    """End to end on Ray, a strategy that cannot batch (FedProx's loss term) in a batched
    group: the history carries what the in-process matrix above checks on the updates (one
    that batches: test_batched_pool_training_gives_the_same_model_as_one_at_a_time)."""
    history = Orchestrator(load_config(_strategy_config("fedprox", batched=True))).run()
    assert (history.event == "aggregation").sum() == 2, history.event.value_counts()
    updates = history[history.event == "update"]
    assert set(updates.participant) == {"site-0", "site-1", "site-2"}
    assert not history.event.isin(["failure", "rejected"]).any(), history[history.event == "failure"].detail
    assert set(updates.batched) == {1.0}


def test_a_task_that_ends_badly_in_a_batch_ends_alone(ray_session):
    """Dropouts drawn inside a batched worker come back as those tasks' outcomes; the
    other tasks of the same call still deliver their updates."""
    raw = _config("pool", rounds=4)
    raw["groups"][0] |= {"batched": True, "system": {"dropout_prob": 0.4}}
    raw["schedule"] = {"mode": "sync", "min_participants": 1}
    history = Orchestrator(load_config(raw)).run()
    assert (history.event == "dropout").sum() > 0
    assert (history.event == "aggregation").sum() == 4
    assert (history.event == "update").sum() > 0
    assert not history.event.isin(["failure"]).any()


def test_dp_fedavg_runs_on_pooled_participants_and_spends_its_budget(ray_session):
    raw = digits_config(groups=[{**digits_config()["groups"][0], "hosting": "pool", "workers": 2}],
                        privacy={"dp": {"noise_multiplier": 1.0, "clip_norm": 1.0}}, stop={"max_aggregations": 3})
    orch = Orchestrator(load_config(raw))
    history = orch.run()
    epsilons = history[history.event == "privacy"].epsilon.to_numpy(dtype=float)
    assert len(epsilons) == 3 and (np.diff(epsilons) > 0).all()
    assert orch.summary["dp_epsilon"] == epsilons[-1]


def test_a_run_that_cannot_be_resumed_leaves_no_private_state_behind(ray_session, tmp_path):
    group = {**digits_config()["groups"][0], "hosting": "pool", "workers": 2}
    # FedPer: each participant's personal head is state it writes after every task
    orch = Orchestrator(load_config(digits_config(groups=[group], stop={"max_aggregations": 2},
                                                  strategy={"name": "fedper"})))
    orch.run()
    assert not private_state.resolve_dir(f"fedray-state/{orch.run_id}").exists()
    kept = digits_config(groups=[group], stop={"max_aggregations": 2}, strategy={"name": "fedper"},
                         checkpoint={"every": 1, "participant_dir": str(tmp_path / "{run_id}" / "{name}")})
    orch = Orchestrator(load_config(kept), out_dir=tmp_path / "run")
    orch.run()  # checkpoints: --resume needs each participant's state (FedPer: its personal head)
    assert sorted(p.name for p in (tmp_path / orch.run_id).iterdir()) == [f"site-{i}" for i in range(4)]


def test_the_cache_also_keeps_within_a_memory_bound(tmp_path):
    specs = [spec(i, tmp_path, "fedavg") for i in range(4)]
    one = PoolWorker(cache_size=10)
    one.describe(specs[0])
    size = one._participant(specs[0]).footprint_bytes()
    assert size > 0
    worker = PoolWorker(cache_size=10, cache_mb=2.5 * size / 2**20)  # room for two, not three
    for s in specs:
        worker.describe(s)
    assert worker.cached() == ["site-2", "site-3"]
    tiny = PoolWorker(cache_size=10, cache_mb=1e-6)  # never evicts the one being served
    for s in specs:
        tiny.describe(s)
    assert tiny.cached() == ["site-3"]


def test_simulated_waits_of_a_batch_overlap(tmp_path, monkeypatch):
    """Four participants trained together each wait out a simulated link: the waits run
    side by side (all four are waiting at once, a count, not a time on a loaded machine),
    and no task's measured training time includes a wait."""
    from actors.participant import pool
    from actors.spec.system import SystemSpec

    waiting = threading.Barrier(4, timeout=60)  # broken (and the test fails) unless all four wait at once
    waited: dict[int, tuple[float, float]] = {}  # task thread -> (seconds asked, seconds it took)

    def pause(seconds: float) -> None:  # the worker's wait, counted
        started = time.perf_counter()
        waiting.wait()
        time.sleep(0.2)
        waited[threading.get_ident()] = (seconds, time.perf_counter() - started)

    monkeypatch.setattr(pool, "_pause", pause)
    worker = PoolWorker()
    specs = [spec(i, tmp_path, "fedavg").model_copy(update={"system": SystemSpec(bandwidth_mbps=0.2)})
             for i in range(4)]
    state = full_state(worker, specs[0])
    link_s = 2 * state.params.nbytes * 8 / 0.2e6
    tasks: dict[int, tuple[object, float]] = {}  # task thread -> (update, seconds the whole task took)

    def task(i: int) -> None:
        started = time.perf_counter()
        update = worker.train(specs[i], state, Instructions(task_id=i, seed=i), (0, 4))
        tasks[threading.get_ident()] = (update, time.perf_counter() - started)

    threads = [threading.Thread(target=task, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(tasks) == 4 and waited.keys() == tasks.keys()
    for ident, (update, took) in tasks.items():
        asked, wait = waited[ident]
        assert asked == pytest.approx(link_s) and update.simulated_seconds >= link_s
        assert update.metrics["batched"] == 4.0
        assert update.train_seconds + wait <= took  # its training time holds no wait


def test_a_round_runs_tasks_that_never_wait_in_its_thread_and_waiting_ones_side_by_side(tmp_path, monkeypatch):
    """Threads only help tasks that wait (or train together): a round of plain tasks runs one
    after another in the calling thread; tasks with a simulated link still wait at once."""
    from actors.participant import pool
    from actors.participant.summing import WorkerSum
    from actors.spec.system import SystemSpec

    waiting = threading.Barrier(2, timeout=60)  # broken (the tasks fail) unless both wait at once
    monkeypatch.setattr(pool, "_pause", lambda seconds: seconds and waiting.wait())
    worker = PoolWorker()
    plain = [spec(i, tmp_path, "fedavg") for i in range(2)]
    linked = [spec(i + 2, tmp_path, "fedavg").model_copy(update={"system": SystemSpec(bandwidth_mbps=0.2)})
              for i in range(2)]
    state = full_state(worker, plain[0])
    ran_in: list[int] = []
    train = worker._train

    def spy(*args):
        ran_in.append(threading.get_ident())
        return train(*args)

    monkeypatch.setattr(worker, "_train", spy)
    for group, inline in ((plain, True), (linked, False)):
        ran_in.clear()
        *updates, total = worker.train_round([(s, Instructions(task_id=i, seed=i)) for i, s in enumerate(group)],
                                             state, None)
        assert all(u.summed for u in updates) and isinstance(total, WorkerSum) and len(total.task_ids) == 2
        assert (set(ran_in) == {threading.get_ident()}) is inline, ran_in


def test_a_round_trains_together_without_waiting_for_a_task_that_failed_to_start(tmp_path, monkeypatch):
    """The tasks of one ``train_round`` call are a cohort that has all arrived: one that
    cannot even start (its worker does not know it) ends at once, and the others train
    together without waiting for it (before, they waited ``COHORT_WAIT_S`` for it)."""
    from actors.participant import cohort
    from actors.participant.pool import NotRegistered

    monkeypatch.setattr(cohort, "COHORT_WAIT_S", 30.0)
    worker = PoolWorker()
    members = [spec(i, tmp_path, "fedavg") for i in range(3)]
    state = full_state(worker, members[0])
    tasks = [(s, Instructions(task_id=i, seed=i)) for i, s in enumerate(members)] + [
        ("site-9", Instructions(task_id=3, seed=3))]
    started = time.monotonic()
    *outcomes, total = worker.train_round(tasks, state, None, cohort=(0, len(tasks)))
    assert time.monotonic() - started < cohort.COHORT_WAIT_S / 2
    assert isinstance(outcomes[-1], NotRegistered)
    assert [u.metrics["batched"] for u in outcomes[:3]] == [3.0] * 3
    assert sorted(total.task_ids) == [0, 1, 2]


def test_every_batched_step_of_a_worker_runs_on_its_one_compute_thread(tmp_path, monkeypatch):
    """OpenMP keeps helper threads per calling thread: the batched steps of every round run
    on the process's one compute thread, not in whichever task thread arrived last, and an
    error there reaches the tasks as before."""
    from actors.participant import cohort
    from actors.training import threads

    ran_on: list[str] = []
    train_batched = cohort.train_batched

    def recording(*args, **kwargs):
        ran_on.append(threading.current_thread().name)
        return train_batched(*args, **kwargs)

    monkeypatch.setattr(cohort, "train_batched", recording)
    worker = PoolWorker()
    members = [spec(i, tmp_path, "fedavg") for i in range(3)]
    state = full_state(worker, members[0])
    for r in range(2):
        tasks = [(s, Instructions(task_id=3 * r + i, seed=i)) for i, s in enumerate(members)]
        *outcomes, _ = worker.train_round(tasks, state, None, cohort=(3 * r, 3))
        assert [u.metrics["batched"] for u in outcomes] == [3.0] * 3
    assert len(ran_on) == 2 and all(name.startswith(threads.COMPUTE_THREAD) for name in ran_on)
    with pytest.raises(ZeroDivisionError):
        threads.on_compute_thread(lambda: 1 / 0)


def test_a_batch_keeps_every_member_cached_while_it_trains(tmp_path):
    """Under secure aggregation each member of a batch holds its sealed update in memory:
    a cache smaller than the batch must not evict members of the batch while they train
    (their updates would be lost and counted as dropouts)."""
    worker = PoolWorker(cache_size=2)
    specs = [spec(i, tmp_path, "fedavg") for i in range(4)]
    state = full_state(worker, specs[0])
    updates = train_together(worker, state, [Instructions(task_id=i, seed=i, seal=True) for i in range(4)], specs)
    assert not [u for u in updates if isinstance(u, Exception)], updates
    assert sorted(worker.cached()) == [s.name for s in specs]  # each holds its sealed update
    assert all(len(worker._served[s.name].sealed) == 1 for s in specs)


@pytest.mark.parametrize("batched", [False, True], ids=["one_at_a_time", "batched"])
def test_a_fast_participant_is_not_held_back_by_a_straggler_on_its_worker(ray_session, tmp_path, batched):
    """Wall clock, one pool worker, two participants whose links take about 3 s (site-0,
    sent first) and 0.3 s (site-1): the fast update lands at least 2 s before the slow one,
    whether the worker trains them together or one at a time. (Task by task: a worker that
    sums its round sends every update back at once, and the round waits for all anyway.)"""
    params = 64 * 16 + 16 + 16 * 10 + 10  # the MLP below on digits
    link_mbps = [2 * params * 4 * 8 / (seconds * 1e6) for seconds in (3.0, 0.3)]
    (tmp_path / "fleet.csv").write_text("speed,bandwidth_mbps\n" + "".join(f"1.0,{b}\n" for b in link_mbps))
    group = {"name": "site", "count": 2, "hosting": "pool", "workers": 1, "batched": batched,
             "model": {"name": "mlp", "hidden": [16]}, "train": {"local_steps": 2, "batch_size": 16, "lr": 0.1},
             "resources": {"num_cpus": 0.5}, "system": {"trace": {"path": str(tmp_path / "fleet.csv")}}}
    raw = digits_config(groups=[group], stop={"max_aggregations": 1}, schedule={"mode": "sync", "sum_in_workers": False})
    history = Orchestrator(load_config(raw)).run()
    updates = history[history.event == "update"].set_index("participant")
    assert set(updates.index) == {"site-0", "site-1"}, history.event.value_counts()
    assert set(updates.batched) == ({2.0} if batched else {1.0})
    slow, fast = updates.wall_time["site-0"], updates.wall_time["site-1"]
    assert slow - fast >= 2.0, f"fast update at {fast:.2f} s, slow one at {slow:.2f} s"


@pytest.mark.parametrize("batched", [False, True], ids=["one_at_a_time", "batched"])
def test_a_hung_pooled_task_is_charged_to_its_participant_alone(ray_session, batched):
    """A task that hangs on a pool worker times out as its own participant's failure;
    the worker is not killed, so the tasks of the participants it also serves go on."""
    group = {"name": "site", "count": 3, "hosting": "pool", "workers": 1, "batched": batched,
             "model": {"name": "mlp", "hidden": [16]}, "train": {"local_steps": 2, "batch_size": 16, "lr": 0.1},
             "resources": {"num_cpus": 0.5}, "system": {"hang_prob": 0.3}}
    raw = digits_config(groups=[group], stop={"max_aggregations": 4},
                        schedule={"mode": "sync", "min_participants": 1, "task_timeout_s": 3.0, "max_failures": 10})
    orch = Orchestrator(load_config(raw))
    history = orch.run()
    timeouts = history[history.event == "timeout"]
    assert len(timeouts) > 0, history.event.value_counts()
    assert not history.event.isin(["failure", "participant_lost"]).any(), history[history.event == "failure"].detail
    assert (history.event == "aggregation").sum() == 4
    assert len({m.info["pid"] for m in orch.members.values()}) == 1


def _requests(tmp_path, count: int) -> list:
    from actors.participant.cohort import Request
    from actors.participant.participant import Participant
    from strategies.client import Work

    return [Request(Participant(spec(i, tmp_path, "fedavg")).local, Work(i, 1, 2), (), None) for i in range(count)]


def _out_of_memory_above(limit: int, monkeypatch) -> None:
    """Injected at the smallest seam (no GPU here): batched training of more than
    ``limit`` participants raises torch's real OutOfMemoryError."""
    import torch

    from actors.participant import cohort

    real = cohort.train_batched

    def limited(models, *args, **kwargs):
        if len(models) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(models, *args, **kwargs)

    monkeypatch.setattr(cohort, "train_batched", limited)


def test_a_batch_out_of_gpu_memory_is_split_until_it_fits(tmp_path, monkeypatch):
    from actors.participant.cohort import run

    _out_of_memory_above(2, monkeypatch)
    requests = _requests(tmp_path, 4)
    run(requests)
    assert [r.error for r in requests] == [None] * 4
    assert [r.local.trained_together for r in requests] == [2] * 4  # two halves of two


def test_only_a_participant_out_of_gpu_memory_alone_fails_and_its_error_names_the_batch(tmp_path, monkeypatch):
    import torch

    from actors.participant.cohort import run
    from actors.participant.gpu_memory import describe_oom
    from actors.training.local_model import TorchLocalModel

    _out_of_memory_above(1, monkeypatch)
    real = TorchLocalModel.train_now

    def site_3_too_big(self, *args, **kwargs):
        if self.spec.name == "site-3":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TorchLocalModel, "train_now", site_3_too_big)
    requests = _requests(tmp_path, 4)
    run(requests)
    assert [r.error for r in requests[:3]] == [None] * 3
    assert [r.local.trained_together for r in requests[:3]] == [1] * 3
    message = describe_oom("participant site-3", 2.0, requests[3].error)
    assert "training alone, after its batch of 4 (site-0, site-1, site-2, site-3) ran out together" in message


def test_running_out_of_gpu_memory_while_setting_up_names_the_participant(tmp_path, monkeypatch):
    import torch

    from actors.participant import participant
    from actors.participant.participant import GPUMemoryExceeded, Participant

    def too_big(*args, **kwargs):  # moving the data to the card (injected: no GPU here)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")

    monkeypatch.setattr(participant, "TorchLocalModel", too_big)
    with pytest.raises(GPUMemoryExceeded, match=r"participant site-0 ran out of GPU memory.*3\.00 GiB"):
        Participant(spec(0, tmp_path, "fedavg")).describe()


def test_a_cohort_stops_waiting_for_a_member_that_never_arrives(tmp_path, monkeypatch):
    """A member the driver cancelled while it queued never arrives: the others train
    without it after COHORT_WAIT_S instead of waiting for ever."""
    from actors.participant import cohort

    monkeypatch.setattr(cohort, "COHORT_WAIT_S", 0.5)
    worker = PoolWorker()
    s = spec(0, tmp_path, "fedavg")
    state = full_state(worker, s)
    done: list = []
    thread = threading.Thread(target=lambda: done.append(worker.train(s.name, state, Instructions(0, seed=0), (0, 2))),
                              daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert done and done[0].metrics["batched"] == 1.0


def test_a_registered_participant_is_named_and_an_unknown_name_is_refused(tmp_path):
    """Registered once (a spec), then addressed by name; a name the worker has no spec for
    (it restarted) is refused with NotRegistered, so the driver sends the spec again."""
    from actors.participant.pool import NotRegistered

    worker = PoolWorker()
    s = spec(0, tmp_path, "fedavg")
    with pytest.raises(NotRegistered, match="participant site-0 is not registered"):
        worker.describe("site-0")
    worker.register([s])
    assert worker.describe("site-0")["num_examples"] > 0
    updated = s.model_copy(update={"seed": 7})  # as the driver adds the fitted preprocessing
    worker.register([updated])
    assert worker._spec("site-0") is updated


def test_the_driver_sends_a_pooled_spec_once_and_again_after_a_change_or_a_restart(tmp_path):
    import ray as ray_module

    from actors.participant.pool import NotRegistered
    from orchestrator.cluster.members import Member, worker_restarted

    worker, other = object(), object()  # stand-ins for two workers' handles (compared by identity)
    members = [Member(f"site-{i}", "site", i, handle, spec(i, tmp_path, "fedavg"), -1, pooled=True)
               for i, handle in enumerate([worker, worker, other])]
    first = members[0]
    assert first.address() is first.spec and first.address() == "site-0"  # registers once, then names
    first.spec = first.spec.model_copy(update={"seed": 7})  # the fitted preprocessing reaches the worker
    assert first.address() is first.spec and first.address() == "site-0"
    for m in members:
        m.address()
    worker_restarted(members, first, ray_module.exceptions.RayActorError())
    assert [m.registered for m in members] == [False, False, True]  # the other worker kept its own
    for m in members:
        m.address()
    worker_restarted(members, members[1], NotRegistered("site-1"))
    assert [m.registered for m in members] == [False, False, True]


def test_a_worker_is_leased_to_one_driver_at_a_time():
    worker = PoolWorker()
    assert worker.lease("driver-a") and worker.lease("driver-a")  # again by its holder: still ours
    assert not worker.lease("driver-b")  # a second driver must not serve a run beside the first
    assert worker.lease(None) and worker.lease("driver-b")  # given back: the next one takes it


def test_describe_each_answers_for_every_participant_and_says_why_one_could_not_start(tmp_path):
    """Start-up describes a worker's participants in one call; one that cannot set up
    answers with its reason and the others are still described."""
    from actors.participant.pool import CouldNotStart
    from actors.spec.data import FileData

    worker = PoolWorker()
    missing = spec(1, tmp_path, "fedavg").model_copy(
        update={"data": FileData(source="file", path=str(tmp_path / "gone.csv"))})
    refused = spec(2, tmp_path, "fedmd", dp_sgd=DPSGD(noise_multiplier=1.0, max_grad_norm=1.0))
    answers = worker.describe_each([spec(0, tmp_path, "fedavg"), missing, refused, spec(3, tmp_path, "fedavg")])
    assert [a["name"] for a in (answers[0], answers[3])] == ["site-0", "site-3"]
    assert answers[1] == CouldNotStart(f"participant site-1: data file not found: {tmp_path / 'gone.csv'}")
    assert isinstance(answers[2], CouldNotStart)
    assert answers[2].message.startswith("participant site-2: could not start: ValueError: participant site-2: "
                                         "train.dp_sgd protects plain local training")
    assert worker.describe("site-3")["num_examples"] == answers[3]["num_examples"]  # registered by name


def test_a_worker_serving_more_than_it_keeps_describes_without_building_models(tmp_path):
    """Past its cache, a worker would build each model only to read its layout and evict it:
    once it has built one of the architecture, it describes the others from their data. They
    report what a full set-up reports, are refused alike, and start from the same weights."""
    from actors.participant.participant import Participant
    from actors.participant.pool import CouldNotStart

    specs = [spec(i, tmp_path, "fedavg") for i in range(3)]
    refused = spec(3, tmp_path, "fedmd", dp_sgd=DPSGD(noise_multiplier=1.0, max_grad_norm=1.0))
    worker = PoolWorker(cache_size=2)
    answers = worker.describe_each([*specs, refused])
    assert [p.footprint_bytes() for p in worker._served.values()] == [0, 0]  # site-2, site-3: no model
    for s, answer in zip(specs, answers):
        full = Participant(s).describe()
        assert answer.keys() == full.keys()
        assert all(np.array_equal(answer[k], full[k]) if isinstance(full[k], np.ndarray) else answer[k] == full[k]
                   for k in full), s.name
    assert isinstance(answers[3], CouldNotStart)
    assert "train.dp_sgd protects plain local training" in answers[3].message
    assert np.array_equal(worker.initial_parameters(specs[2].name), Participant(specs[2]).initial_parameters())
    assert worker._served["site-2"].footprint_bytes() > 0  # set up once asked for its weights


def test_a_worker_whose_tasks_train_together_warms_that_up_at_start_and_changes_nothing(tmp_path):
    """The first batched step sets vmap up: a batching worker takes it while describing,
    once per architecture, and its participants start and train exactly as without it."""
    from actors.participant import cohort

    cohort._WARMED.clear()
    plain, warmed = PoolWorker(), PoolWorker()
    plain_specs = [spec(i, tmp_path / "plain", "fedavg") for i in range(2)]
    warmed_specs = [spec(i, tmp_path / "warmed", "fedavg") for i in range(2)]
    plain.describe_each(plain_specs)
    assert not cohort._WARMED
    layout = warmed.describe_each(warmed_specs, together=True)[0]["layout"]
    assert list(cohort._WARMED) == [("cpu", layout)]
    for a, b in zip(plain_specs, warmed_specs):
        start = plain.initial_parameters(a.name)
        assert np.array_equal(start, warmed.initial_parameters(b.name))
        state = GlobalState(0, start, layout)
        assert np.array_equal(plain.train(a.name, state, Instructions(0, seed=3)).payload,
                              warmed.train(b.name, state, Instructions(0, seed=3)).payload)


def test_a_participant_that_kills_its_pool_worker_at_start_up_leaves_the_others_starting(ray_session, tmp_path):
    """A real crash in the one start-up call of a worker: Ray restarts the worker, the
    driver asks its participants again one at a time, and only the one that crashes it
    is lost."""
    from tests.site_loader import blobs

    x, y = blobs("test", 100, "held-out", rows=60)
    pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])]).assign(label=y).to_csv(tmp_path / "test.csv",
                                                                                           index=False)
    config = load_config({
        "name": "crash-at-start", "groups": [{
            "name": "site", "count": 3, "hosting": "pool", "workers": 1,
            "data": {"source": "python", "factory": "tests.site_loader:kills_its_process_at_site_1",
                     "num_classes": 3},
            "model": {"name": "mlp", "hidden": [8]}, "train": {"batch_size": 16}, "resources": {"num_cpus": 0.5}}],
        "evaluation": {"path": str(tmp_path / "test.csv")}, "schedule": {"min_participants": 2},
        "stop": {"max_aggregations": 2}})
    history = Orchestrator(config).run()
    failures = history[history.event == "failure"]
    assert failures.participant.tolist() == ["site-1"]
    assert "could not start" in failures.detail.iloc[0]
    updates = history[history.event == "update"]
    assert sorted(updates.participant.unique()) == ["site-0", "site-2"] and len(updates) == 4


def test_a_participant_that_answers_no_describe_in_time_is_named_and_lost(ray_session):
    from orchestrator.cluster.describe import START_TIMEOUT_S, _await_start
    from orchestrator.cluster.members import Member

    @ray.remote(num_cpus=0)
    def never_answers() -> dict:
        time.sleep(60)
        return {}

    @ray.remote(num_cpus=0)
    def answers() -> dict:
        return {"num_examples": 3}

    slow, quick = (Member(name, "site", i, None, None, max_restarts=0) for i, name in enumerate(["site-0", "site-1"]))
    ray.get(answers.remote(), timeout=120)  # a worker process for it exists: a loaded CI machine took >2 s to start one
    hung = never_answers.remote()
    errors = _await_start({hung: slow, answers.remote(): quick}, timeout=2.0)
    ray.cancel(hung, force=True)
    assert errors == [("site-0", f"participant site-0: did not start within {START_TIMEOUT_S:.0f}s")]
    assert slow.lost and not quick.lost and quick.info == {"num_examples": 3}
