"""The run loop: one federated experiment, top to bottom.

    config -> start/join Ray -> spawn participants (each loads its own data)
           -> global state v0, ray.put once
           -> loop: dispatch to idle participants as the schedule says
                    wait for whichever task lands first (never a get on a straggler)
                    check the update, admit it with its staleness weight
                    when the schedule says so: strategy.aggregate, v += 1, ray.put once
                    evaluate every N versions; stop on any stop condition
           -> write the run directory: config, history, summary

Three pieces: :class:`~orchestrator.loop.run_state.RunState` is everything the loop changes
(and what a checkpoint saves); :mod:`orchestrator.cluster.participants` does everything to the
actors; this file is the loop between them. Everything it decides is a history event.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray

from actors.data.tables import DataError
from actors.participant.private_state import SAVED_METRIC
from orchestrator.cluster import preflight
from orchestrator.cluster.connect import connect_ray, disconnect_ray
from orchestrator.cluster.members import Member, RunError
from orchestrator.cluster.participants import Participants
from orchestrator.cluster.simulated_costs import TaskCosts
from orchestrator.cluster.specs import participant_specs
from orchestrator.config import RunConfig
from orchestrator.loop import checkpoint
from orchestrator.loop.adaptive import AdaptiveLocalWork
from orchestrator.loop.clock import make_clock
from orchestrator.loop.run_state import RunState
from orchestrator.loop.schedules import Task, make_schedule
from orchestrator.loop.stopping import Divergence, diverged, divergence_message, stop_reason
from orchestrator.records.history import History
from orchestrator.records.progress import Progress
from orchestrator.records.results import save_run, summarize
from orchestrator.records.tensorboard import TensorBoardLogger
from orchestrator.server.global_state import GlobalModel, GlobalStateError, build_global_model
from orchestrator.server.preprocessing import load_transform, save_transform
from orchestrator.server.privacy import PrivacyHooks
from strategies.hygiene import clip_to_norm, rejection_reason
from strategies.types import GlobalState, Instructions, Update

__all__ = ["Orchestrator", "RunError"]

class Orchestrator:
    """Runs one experiment described by a :class:`RunConfig`.

    >>> # history = Orchestrator(load_config("examples/fedprox.yaml"), out_dir="runs/x").run()
    >>> # history[history.event == "evaluation"].accuracy.iloc[-1]
    """

    def __init__(self, config: RunConfig, out_dir: str | Path | None = None,
                 progress: Progress | None = None, resume: bool = False, costs: TaskCosts | None = None) -> None:
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        # resume from the latest checkpoint in out_dir; run_id names private state
        self.resume_from = checkpoint.read_latest(self.out_dir) if resume and self.out_dir else None
        self.run_id = self.resume_from.run_id if self.resume_from else uuid.uuid4().hex[:12]
        self.progress = progress
        self.history = History()
        self.run_clock = make_clock(config.clock, self.history)
        self.privacy = PrivacyHooks(config.privacy, config)
        self.strategy = config.strategy.build()
        self.schedule = make_schedule(config.schedule, config.seed)
        self.participants = Participants(config, self.history, self.privacy, self.run_clock)
        self.participants.priced = costs  # None: priced as the config says (Participants.priced)
        self.join_at = {g.name: g.join_at for g in config.groups}
        self.global_model: GlobalModel | None = None
        self.state: RunState | None = None
        self.state_ref: ray.ObjectRef | None = None
        self.adaptive: AdaptiveLocalWork | None = None
        self.divergence = Divergence()
        self.tensorboard: TensorBoardLogger | None = None
        self.run_start_epoch = time.time()
        self.summary: dict[str, Any] = {}
        self.members_info: dict[str, dict[str, Any]] = {}
        self._started_ray = False

    # ------------------------------------------------------------------ the whole run
    def run(self) -> pd.DataFrame:
        """Run to a stop condition; return the history (also written to ``out_dir``)."""
        plan = preflight.before_ray(self.config)  # a local run: decided before Ray starts
        self._started_ray = connect_ray(plan.config if plan else self.config)
        try:
            plan = plan or preflight.on_ray(self.config)  # joined a running Ray: its resources decide
            if plan.config != self.config:  # chosen here; the CLI prints a choice it made itself
                logging.getLogger("fedray").info(plan.line)
            self.config = self.participants.config = plan.config
            self.history.record("hosting", detail=plan.line)
            self._start()
            stop_reason = self._loop()
            if self.state.last_eval.get("version") != self.state.version:
                self._evaluate()
            self.history.record("stop", version=self.state.version, detail=stop_reason)
            self.summary = summarize(self.history.frame(), self.config, self.state, self.participants)
            self.summary |= self.privacy.summary()  # epsilon, secure aggregation
        finally:
            for sink in (self.progress, self.tensorboard):
                if sink is not None:
                    sink.close()
            self._release()
        if self.out_dir is not None:
            save_run(self.out_dir, self.config, self.history, self.summary, self.members_info, self.state.params)
        return self.history.frame()

    def _start(self) -> None:
        """Spawn the participants, build the global state, resume if asked."""
        self.run_start_epoch = time.time()
        if self.progress is not None:
            self.history.listeners.append(self.progress.on_event)
        if self.config.logging.tensorboard:  # the same scalars, to TensorBoard
            self.tensorboard = TensorBoardLogger(self.config.logging.tensorboard)
            self.history.listeners.append(self.tensorboard.on_event)
        saved = load_transform(self.out_dir) if self.resume_from is not None and self.out_dir else None
        self.participants.spawn(participant_specs(self.config, self.run_id), saved)
        if self.participants.transform is not None and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_transform(self.out_dir, self.participants.transform)
        try:
            self.global_model = build_global_model(self.config, self.participants.alive(), self.strategy)
        except (GlobalStateError, DataError) as exc:  # DataError: the evaluation table
            raise RunError(str(exc)) from None
        self.state = RunState(self.run_id, self.global_model.params, self.global_model.layout)
        if self.config.schedule.adaptive_local_work:  # local steps scaled by measured samples/s
            self.adaptive = AdaptiveLocalWork.for_participants(self.participants.members.values())
        if self.resume_from is not None:  # continue where the checkpoint left off
            self._resume(self.resume_from)
        self._broadcast()  # before evaluating: a pool worker evaluates the broadcast object
        if self.resume_from is None:
            self._evaluate()

    def _loop(self) -> str:
        """The event loop; returns why it stopped."""
        while True:
            now = self.clock()
            reason = self._stop_reason(now)
            if reason:
                return reason
            for task in self.participants.reap_timeouts(now, self.state.version):
                self.schedule.task_finished(task)
            self._dispatch_idle(now)
            if not self.participants.in_flight:
                if (self.state.buffer or self.schedule.ready(0, now)) and not self._cohort_pending(now):
                    self._aggregate()  # nothing more can arrive: use what we have
                    continue
                if not self.participants.next_return(now):
                    return "no participant can take work"
                self.run_clock.sleep(self._wait_timeout(now))  # until one is back (or a deadline/max_wall_s)
                continue
            for ref in self.participants.wait(self._wait_timeout(now)):
                self._receive(ref)  # one arrival at a time: FedAsync mixes each in as it lands,
                if self._ready():  # FedBuff takes exactly buffer_size, staleness stays exact
                    self._aggregate()
                    if self._stop_reason(self.clock()):
                        break
            if self._ready():  # a sync deadline
                self._aggregate()

    # ------------------------------------------------------------------ dispatch/receive
    def _dispatch_idle(self, now: float) -> None:
        alive = self.participants.alive()
        held = self.privacy.hold_back(self.state.buffer, self._ready(now))
        idle = self.participants.idle(  # late joiners wait for their version
            now, lambda m: m.name not in held and self.state.version >= self.join_at[m.group])
        chosen = self.schedule.select(idle, sum(m.busy for m in alive), len(alive), now)
        tasks = [self._task_for(self.participants.members[name]) for name in chosen]
        self.participants.dispatch_all(self.state_ref, tasks)
        for member, instructions, task in tasks:
            self.history.record(
                "dispatch", participant=member.name, group=member.group, task_id=task.task_id,
                version=task.base_version, base_version=task.base_version, bytes=self.state.params.nbytes,
                in_flight=len(self.participants.in_flight), local_steps=instructions.local_steps,
            )

    def _task_for(self, member: Member) -> tuple[Member, Instructions, Task]:
        """The next task for ``member``: its instructions, and what the driver tracks."""
        state = self.state
        local_steps = self.adaptive.steps_for(member.name) if self.adaptive is not None else None
        simulated = self.participants.simulated_seconds(member, local_steps, state.params.nbytes, state.version)
        instructions = Instructions(
            task_id=state.next_task_id, seed=self.participants.task_seed(member), local_steps=local_steps,
            run_start=self.run_start_epoch, seal=self.privacy.secure,
            simulated_at=self.clock() if simulated is not None else None, simulated_seconds=simulated,
            rollback_before=self.participants.rollback_before(member), expect_state=member.saved_task,
        )
        task = Task(member.name, state.next_task_id, state.version, self.schedule.round, self.clock())
        state.next_task_id += 1
        return member, instructions, task

    def _receive(self, ref: ray.ObjectRef) -> None:
        arrival = self.participants.receive(ref, self.state.version)
        self.schedule.task_finished(arrival.task)
        self.state.tasks_without_update += 1
        update, member = arrival.update, arrival.member
        if update is None:  # dropout, failure, ...: already recorded
            return
        if update.metrics.get(SAVED_METRIC):  # after a restart or a resume, it must have this state
            member.saved_task = update.task_id
        if self.adaptive is not None:  # measured samples/s
            self.adaptive.observe(member.name, update.metrics.get("samples", 0.0),
                                  max(update.train_seconds, update.simulated_seconds or 0.0))
        staleness = self.state.version - update.base_version
        where = arrival.fields(self.state.version, len(self.participants.in_flight))
        problem = self._check(update, member)
        self.divergence.observe(member.name, diverged(update), float(update.metrics.get("train_loss", math.nan)),
                                int(update.metrics.get("steps", 0)))
        if problem:
            self.history.record("rejected", **where, detail=problem)
            return
        self.global_model.observe(update)  # participants' own test metrics
        metric = self.config.task.metric_name
        where[metric] = update.metrics.get(f"test_{metric}")  # what it reported on its own test split
        admission = self.schedule.admit(arrival.task, staleness)
        if not admission.accepted:
            self.history.record("late", **where, detail=admission.reason)
            return
        update.staleness, update.weight = staleness, admission.weight
        self.state.buffer.append(update)
        self.state.num_updates += 1
        self.state.tasks_without_update = 0
        self.history.record("update", **where, weight=admission.weight, detail=admission.reason or None)

    def _check(self, update: Update, member: Member) -> str | None:
        if update.participant != member.name:
            known = "" if update.participant in self.participants.members else " (not a participant of this run)"
            return f"update claims to be from {update.participant!r}{known}, task went to {member.name!r}"
        if self.privacy.secure or update.summed:  # checked where it was made: sealed, or summed in its worker
            return self.privacy.check(update) if self.privacy.secure else None
        problem = rejection_reason(update, self.global_model.expected_layout(member.name),
                                   self.strategy.update_extras)
        if problem is None and (clip := self.config.updates.clip_norm) is not None:
            clip_to_norm(update, clip)
        return problem

    # ------------------------------------------------------------------ aggregation
    def _ready(self, now: float | None = None) -> bool:
        return self.schedule.ready(len(self.state.buffer), self.clock() if now is None else now)

    def _cohort_pending(self, now: float) -> bool:
        return self.schedule.waits_for_cohort and self.privacy.waiting_for_cohort(
            self.state.buffer, bool(self.participants.in_flight) or bool(self.participants.next_return(now)))

    def _aggregate(self) -> None:
        if self._cohort_pending(self.clock()):
            return  # wait for updates from more participants before decoding a sum
        state = self.state
        batch = sorted(state.buffer, key=lambda u: u.task_id)  # arrival order must not matter
        state.buffer = []
        self.schedule.aggregated(self.clock())
        if not batch:
            self.history.record("round_skipped", version=state.version, detail="no update arrived in time")
            return
        combined = self.privacy.combine_recorded(batch, state.layout, self.participants.members,
                                                 self.history, state.version)
        if combined is None:
            return
        seen, batch = combined  # and the sums made in pool workers folded in (worker_sums.py):
        new_params = self.strategy.aggregate(state.params, self.participants.sums.fold(seen, self.history, state.version))
        if self.privacy.accountant is not None:
            self.history.record("privacy", version=state.version, epsilon=self.privacy.epsilon(),
                                detail=f"delta={self.privacy.dp.delta}")
        if new_params.shape != state.params.shape or not np.isfinite(new_params).all():
            self.history.record(
                "rejected", version=state.version,
                detail="aggregation produced non-finite or misshapen parameters; kept the previous model",
            )
            return
        self._advance(new_params.astype(np.float32, copy=False), batch)

    def _advance(self, params: np.ndarray, batch: list[Update]) -> None:
        """The next version: broadcast once, record, evaluate and checkpoint on schedule."""
        state = self.state
        state.params, state.version = params, state.version + 1
        self._broadcast()
        self.participants.driver_busy("aggregation")
        stalenesses = [u.staleness for u in batch]
        self.history.record(
            "aggregation", version=state.version, num_examples=sum(u.num_examples for u in batch),
            staleness=max(stalenesses), in_flight=len(self.participants.in_flight),
            detail=f"{len(batch)} updates, mean staleness {np.mean(stalenesses):.2f}",
        )
        if state.version % self.config.evaluation.every == 0:
            self._evaluate()
        self._checkpoint()

    def _broadcast(self) -> None:
        """One ``ray.put`` per version; every participant reads the same object."""
        state = self.state
        self.state_ref = ray.put(GlobalState(state.version, state.params, state.layout, self.strategy.broadcast()))

    def _evaluate(self) -> None:
        metrics = self.global_model.evaluate(self.state.params, self.state_ref)  # per family, global_state.py
        self.participants.driver_busy("evaluation")
        self.state.evaluated(metrics, self.config.target, self.clock())
        self.history.record("evaluation", version=self.state.version, metric=self.config.task.metric_name,
                            in_flight=len(self.participants.in_flight), **metrics)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> None:
        """Every ``checkpoint.every`` versions, snapshot the run state atomically."""
        state = self.state
        if path := checkpoint.save_if_due(self.out_dir, self.config, state, self.participants, self._owned(), self.history):
            self.history.record("checkpoint", version=state.version, detail=path.name)

    def _owned(self) -> dict[str, Any]:
        """The objects whose ``state_dict()`` a checkpoint keeps beside the run state."""
        return {"strategy": self.strategy, "schedule": self.schedule, "privacy": self.privacy, "clock": self.run_clock}

    def _resume(self, saved: RunState) -> None:
        """Put a checkpoint back: participants are spawned, the global state is built."""
        try:
            self.state = checkpoint.restore(saved, self.state.layout, self.participants, self._owned(), self.history)
        except ValueError as exc:
            raise RunError(str(exc)) from None
        self.history.record("resumed", version=self.state.version, detail=f"run {self.run_id}")

    # ------------------------------------------------------------------ waiting and stopping
    def _stop_reason(self, now: float) -> str | None:
        wall = time.perf_counter() - self.history.start
        reason = stop_reason(self.config, self.state, len(self.participants.alive()), now, wall)
        return reason or (divergence_message(self.divergence, self.config, self.global_model)
                          if self.divergence.stopping else None)

    def _wait_timeout(self, now: float) -> float | None:
        """Until the next moment something must happen even if nothing arrives."""
        max_wall_s = None if self.run_clock.simulated else self.config.stop.max_wall_s
        moments = [t for t in (self.schedule.deadline(), max_wall_s, *self.participants.deadlines(),
                                *self.participants.next_return(now)) if t is not None]
        return max(0.0, min(moments) - now) if moments else None

    def clock(self) -> float:
        """Seconds since the start by the run's clock, wall or simulated (kept across a resume)."""
        return self.run_clock.now()

    def _release(self) -> None:
        self.participants.release(discard_state=self.config.checkpoint.every is None)
        self.members_info = {m.name: m.info for m in self.participants.members.values()}
        if self._started_ray:  # nothing to keep warm for: Ray goes with this run
            disconnect_ray()

    members = property(lambda self: self.participants.members, doc="The participants, by name.")
    version = property(lambda self: self.state.version if self.state else 0, doc="The global version.")
    params = property(lambda self: self.state.params, doc="The global parameter vector.")
