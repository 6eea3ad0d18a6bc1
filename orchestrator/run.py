"""The run loop: one federated experiment, top to bottom.

    config -> start/join Ray -> spawn Participant actors (each loads its own data)
           -> global state v0, ray.put once
           -> loop: dispatch to idle participants as the schedule says
                    ray.wait for whichever task lands first (never a get on a straggler)
                    check the update, admit it with its staleness weight
                    when the schedule says so: strategy.aggregate, v += 1, ray.put once
                    evaluate every N versions; stop on any stop condition
           -> write the run directory: config, history, summary

Everything the loop decides is recorded as a history event.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
import yaml

from actors.local_dp import PrivacyBudgetSpent
from actors.participant import Participant
from actors.spec import ParticipantSpec, PartitionData
from actors.system import SimulatedDropout, Unavailable, draw_speeds
from orchestrator import checkpoint
from orchestrator.adaptive import AdaptiveLocalWork, base_steps
from orchestrator.config import RunConfig, participant_name
from orchestrator.global_state import GlobalStateError, build_global_model
from orchestrator.history import History
from orchestrator.placement import PlacementError, Placements, check_placement
from orchestrator.privacy import PrivacyHooks, SecureAggregationAbort
from orchestrator.progress import Progress
from orchestrator.schedules import Task, make_schedule
from orchestrator.tensorboard import TensorBoardLogger
from strategies.hygiene import clip_to_norm, rejection_reason
from strategies.types import GlobalState, Instructions, Layout, Update

START_TIMEOUT_S = 300.0
"""How long participants may take to start (import torch, load data) before we give up."""

STALL_TASKS_PER_PARTICIPANT = 20
"""Stop as stalled after this many finished tasks per live participant in a row without one
accepted update (everyone drops out, say), so a run whose max_aggregations can never be
reached still ends."""


RESTART_BACKOFF_S = 1.0
"""How long to leave a participant alone while Ray restarts its actor."""


class RunError(RuntimeError):
    """The run cannot go on (no participants left, none could start); the message says why."""


@dataclass
class Member:
    """The driver's view of one participant."""

    name: str
    group: str
    index: int
    handle: Any
    spec: ParticipantSpec
    max_restarts: int
    busy: bool = False
    lost: bool = False
    failures: int = 0
    tasks: int = 0
    retry_at: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


class Orchestrator:
    """Runs one experiment described by a :class:`RunConfig`.

    >>> # history = Orchestrator(load_config("examples/demo.yaml"), out_dir="runs/x").run()
    >>> # history[history.event == "evaluation"].accuracy.iloc[-1]
    """

    def __init__(
        self,
        config: RunConfig,
        out_dir: str | Path | None = None,
        progress: Progress | None = None,
        resume: bool = False,
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        # resume from the latest checkpoint in out_dir; run_id names private state
        self.resume_from = checkpoint.read_latest(self.out_dir) if resume and self.out_dir else None
        self.run_id = self.resume_from.run_id if self.resume_from else uuid.uuid4().hex[:12]
        self.privacy = PrivacyHooks(config.privacy, config)
        self.progress = progress
        self.tensorboard: TensorBoardLogger | None = None  # set by logging.tensorboard
        self.history = History()
        self.summary: dict[str, Any] = {}
        self.members: dict[str, Member] = {}
        self._started_ray = False
        self.members_info: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ the whole run
    def run(self) -> pd.DataFrame:
        """Run to a stop condition; return the history (also written to ``out_dir``)."""
        cfg = self.config
        self._connect_ray()
        try:
            self.run_start_epoch = time.time()
            self.history = History()
            if self.progress is not None:
                self.history.listeners.append(self.progress.on_event)
            if cfg.logging.tensorboard:  # the same scalars, to TensorBoard
                self.tensorboard = TensorBoardLogger(cfg.logging.tensorboard)
                self.history.listeners.append(self.tensorboard.on_event)
            self._spawn_participants()
            self.adaptive = self._make_adaptive()
            self.join_at = {g.name: g.join_at for g in cfg.groups}
            self.strategy = cfg.strategy.build()
            self.layout, self.params = self._initial_state()
            self.schedule = make_schedule(cfg.schedule, cfg.seed)
            self.version = 0
            self.state_ref = ray.put(GlobalState(0, self.params, self.layout))
            self.in_flight: dict[ray.ObjectRef, Task] = {}
            self.buffer: list[Update] = []
            self.next_task_id = 0
            self.num_updates = 0
            self.tasks_without_update = 0
            self.last_eval: dict[str, float] = {}
            self.time_to_target: float | None = None
            if self.resume_from is not None:  # continue where the checkpoint left off
                checkpoint.restore(self, self.resume_from)
                self.state_ref = ray.put(GlobalState(self.version, self.params, self.layout))
                self.history.record("resumed", version=self.version, detail=f"run {self.run_id}")
            else:
                self._evaluate()
            stop_reason = self._loop()
            if self.last_eval.get("version") != self.version:
                self._evaluate()
            self.history.record("stop", version=self.version, detail=stop_reason)
            self._summarize(stop_reason)
            self.summary |= self.privacy.summary()  # epsilon, secure aggregation
        finally:
            if self.progress is not None:
                self.progress.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
            self._release()
        if self.out_dir is not None:
            self.save(self.out_dir)
        return self.history.frame()

    def _loop(self) -> str:
        """The event loop; returns why it stopped."""
        while True:
            now = self.history_time()
            reason = self._stop_reason(now)
            if reason:
                return reason
            self._reap_timeouts(now)
            alive = [m for m in self.members.values() if not m.lost]
            held = self.privacy.hold_back(self.buffer, self.schedule.ready(len(self.buffer), now))
            idle = [m.name for m in alive if not m.busy and m.retry_at <= now and m.name not in held
                    and self.version >= self.join_at[m.group]]  # late joiners wait
            busy = sum(m.busy for m in alive)
            for name in self.schedule.select(idle, busy, len(alive), now):
                self._dispatch(self.members[name])

            if not self.in_flight:
                if (self.buffer or self.schedule.ready(0, now)) and not self._waiting_for_cohort(now):
                    self._aggregate()  # nothing more can arrive: use what we have
                    continue
                waiting = [m.retry_at for m in alive if m.retry_at > now]
                if not waiting:
                    return "no participant can take work"
                time.sleep(self._wait_timeout(now))  # until one is back (or a deadline/max_wall_s)
                continue

            ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=self._wait_timeout(now))
            if ready:  # take everything else that is already done too, without blocking
                rest = [r for r in self.in_flight if r not in ready]
                if rest:
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for ref in ready:  # one arrival at a time: FedAsync mixes each in as it lands,
                self._receive(ref)  # FedBuff takes exactly buffer_size, staleness stays exact
                if self.schedule.ready(len(self.buffer), self.history_time()):
                    self._aggregate()
                    if self._stop_reason(self.history_time()):
                        break
            if self.schedule.ready(len(self.buffer), self.history_time()):  # a sync deadline
                self._aggregate()

    # ------------------------------------------------------------------ dispatch/receive
    def _dispatch(self, member: Member) -> None:
        seed = int(np.random.SeedSequence([self.config.seed, member.index, member.tasks]).generate_state(1)[0])
        strategy_options = self.strategy.task_options()
        instructions = Instructions(
            task_id=self.next_task_id,
            version=self.version,
            seed=seed,
            payload=self.strategy.payload,
            proximal_mu=float(strategy_options.get("proximal_mu", 0.0)),
            local_steps=self.adaptive.steps_for(member.name) if self.adaptive is not None else None,
            options={"run_start": self.run_start_epoch, **strategy_options,
                     **self.global_model.task_options(member.name),
                     **self.privacy.task_options()},
        )
        ref = member.handle.train.remote(self.state_ref, instructions)
        task = Task(member.name, self.next_task_id, self.version, self.schedule.round, self.history_time())
        self.in_flight[ref] = task
        member.busy, member.tasks = True, member.tasks + 1
        self.next_task_id += 1
        self.history.record(
            "dispatch", participant=member.name, group=member.group, task_id=task.task_id,
            version=self.version, base_version=self.version, bytes=self.params.nbytes,
            in_flight=len(self.in_flight), local_steps=instructions.local_steps,
        )

    def _make_adaptive(self) -> AdaptiveLocalWork | None:
        """Local steps scaled by measured throughput (``schedule.adaptive_local_work``)."""
        if not self.config.schedule.adaptive_local_work:
            return None
        return AdaptiveLocalWork({
            m.name: base_steps(m.info.get("num_examples", 1), m.spec.train.batch_size,
                               m.spec.train.local_epochs, m.spec.train.local_steps)
            for m in self.members.values()
        })

    def _receive(self, ref: ray.ObjectRef) -> None:
        task = self.in_flight.pop(ref)
        member = self.members[task.participant]
        member.busy = False
        self.schedule.task_finished(task)
        self.tasks_without_update += 1
        where = {"participant": member.name, "group": member.group, "task_id": task.task_id,
                 "version": self.version, "base_version": task.base_version,
                 "in_flight": len(self.in_flight)}
        try:
            update: Update = ray.get(ref)
        except SimulatedDropout as exc:
            self.history.record("dropout", **where, detail=_first_line(exc))
            return
        except Unavailable as exc:
            member.retry_at = exc.retry_at
            self.history.record("unavailable", **where, detail=str(exc))
            return
        except PrivacyBudgetSpent as exc:  # the silo's choice, not a failure: it leaves for good
            member.lost = True
            self.history.record("participant_lost", **where, detail=_first_line(exc))
            return
        except ray.exceptions.RayError as exc:  # actor/task errors, and Ray's OOM kills too
            self._failed(member, where, exc)
            return
        member.failures = 0
        if self.adaptive is not None:  # measured samples/s
            self.adaptive.observe(member.name, update.metrics.get("samples", 0.0),
                                  max(update.train_seconds, update.simulated_seconds or 0.0))
        staleness = self.version - update.base_version
        where |= {"staleness": staleness, "num_examples": update.num_examples, "bytes": update.nbytes,
                  "train_seconds": update.train_seconds, "simulated_seconds": update.simulated_seconds,
                  "loss": update.metrics.get("train_loss"), "samples": update.metrics.get("samples")}
        if "dp_sgd_epsilon" in update.metrics:  # local DP-SGD: the participant's budget spent so far
            where["epsilon"] = update.metrics["dp_sgd_epsilon"]
        problem = self._check(update, member)
        if problem:
            self.history.record("rejected", **where, detail=problem)
            return
        self.global_model.observe(update)  # participants' own test metrics
        where["accuracy"] = update.metrics.get("test_accuracy")
        admission = self.schedule.admit(task, staleness)
        if not admission.accepted:
            self.history.record("late", **where, detail=admission.reason)
            return
        update.staleness, update.weight = staleness, admission.weight
        self.buffer.append(update)
        self.num_updates += 1
        self.tasks_without_update = 0
        self.history.record("update", **where, weight=admission.weight, detail=admission.reason or None)

    def _check(self, update: Update, member: Member) -> str | None:
        if update.participant != member.name:
            known = "" if update.participant in self.members else " (not a participant of this run)"
            return f"update claims to be from {update.participant!r}{known}, task went to {member.name!r}"
        if self.privacy.secure:  # sealed: the participant checked the plaintext
            return self.privacy.check(update)
        problem = rejection_reason(update, self.global_model.expected_layout(member.name))
        clip = self.config.updates.clip_norm
        if problem is None and clip is not None:
            clip_to_norm(update, clip)
        return problem

    def _failed(self, member: Member, where: dict, exc: Exception, event: str = "failure") -> None:
        self.privacy.forget(member.name)  # a restarted actor has a new masking key
        if isinstance(exc, ray.exceptions.ActorUnavailableError):
            # Ray is restarting the actor (max_restarts); calls fail at once until it
            # is back. Not the participant's failure: back off instead of burning max_failures.
            member.retry_at = self.history_time() + RESTART_BACKOFF_S
            self.history.record("unavailable", **where, detail="actor is restarting")
            return
        member.failures += 1
        died = isinstance(exc, ray.exceptions.RayActorError)
        self.history.record(event, **where, detail=_first_line(exc))
        if (died and member.max_restarts == 0) or member.failures >= self.config.schedule.max_failures:
            member.lost = True
            self.history.record(
                "participant_lost", participant=member.name, group=member.group, version=self.version,
                detail="actor died" if died else f"{member.failures} consecutive failures",
            )

    def _reap_timeouts(self, now: float) -> None:
        limit = self.config.schedule.task_timeout_s
        if limit is None:
            return
        for ref, task in list(self.in_flight.items()):
            if now - task.dispatched_at < limit:
                continue
            del self.in_flight[ref]
            member = self.members[task.participant]
            member.busy = False
            self.schedule.task_finished(task)
            # A hung actor would queue every later task behind the stuck one: kill it, and
            # let Ray restart it if the group allows restarts.
            ray.kill(member.handle, no_restart=member.max_restarts == 0)
            self._failed(
                member,
                {"participant": member.name, "group": member.group, "task_id": task.task_id,
                 "version": self.version, "base_version": task.base_version},
                ray.exceptions.RayActorError(f"task exceeded task_timeout_s={limit}"),
                event="timeout",
            )

    # ------------------------------------------------------------------ aggregation
    def _waiting_for_cohort(self, now: float) -> bool:
        """FedBuff under secure aggregation: the buffer mixes too few participants to decode,
        and more can still arrive (a task in flight, or a participant back soon)."""
        if self.config.schedule.mode != "buffered" or not self.privacy.cohort_too_small(self.buffer):
            return False
        return bool(self.in_flight) or any(m.retry_at > now for m in self.members.values() if not m.lost)

    def _aggregate(self) -> None:
        if self._waiting_for_cohort(self.history_time()):
            return  # wait for updates from more participants before decoding a sum
        batch = sorted(self.buffer, key=lambda u: u.task_id)  # arrival order must not matter
        self.buffer = []
        self.schedule.aggregated(self.history_time())
        if not batch:
            self.history.record("round_skipped", version=self.version, detail="no update arrived in time")
            return
        try:  # secure aggregation / DP hand the strategy one private aggregate
            if self.privacy.cohort_too_small(batch):
                raise SecureAggregationAbort(
                    f"{len({u.participant for u in batch})} participant(s) in the cohort, fewer than "
                    f"privacy.min_cohort={self.config.privacy.min_cohort}: their sum would reveal too much")
            handles = {name: m.handle for name, m in self.members.items()}
            private_batch, dropped = self.privacy.combine(batch, self.layout, handles)
        except SecureAggregationAbort as exc:
            self.history.record("aggregation_aborted", version=self.version, detail=str(exc),
                                num_examples=sum(u.num_examples for u in batch))
            return
        for name in dropped:  # left the cohort after their update arrived
            self.history.record("secagg_dropout", participant=name, group=self.members[name].group,
                                version=self.version, detail="sent no masked update; left out of the sum")
        batch = [u for u in batch if u.participant not in dropped]
        new_params = self.strategy.aggregate(self.params, private_batch)
        if self.privacy.accountant is not None:
            self.history.record("privacy", version=self.version, epsilon=self.privacy.epsilon(),
                                detail=f"delta={self.privacy.dp.delta}")
        if new_params.shape != self.params.shape or not np.isfinite(new_params).all():
            self.history.record(
                "rejected", version=self.version,
                detail="aggregation produced non-finite or misshapen parameters; kept the previous model",
            )
            return
        self.params = new_params.astype(np.float32, copy=False)
        self.version += 1
        self.state_ref = ray.put(GlobalState(self.version, self.params, self.layout))
        stalenesses = [u.staleness for u in batch]
        self.history.record(
            "aggregation", version=self.version, num_examples=sum(u.num_examples for u in batch),
            staleness=max(stalenesses), in_flight=len(self.in_flight),
            detail=f"{len(batch)} updates, mean staleness {np.mean(stalenesses):.2f}",
        )
        if self.version % self.config.evaluation.every == 0:
            self._evaluate()
        self._checkpoint()

    def _checkpoint(self) -> None:
        """Every ``checkpoint.every`` versions, snapshot the driver atomically."""
        policy = self.config.checkpoint
        if policy.every is None or self.out_dir is None or self.version % policy.every:
            return
        if not (self.out_dir / "config.yaml").exists():  # `fedray run --resume DIR` reads it
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(
                yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))
        path = checkpoint.write_checkpoint(self.out_dir, checkpoint.capture(self), policy.keep)
        self.history.record("checkpoint", version=self.version, detail=path.name)

    def checkpoint_extra(self) -> dict[str, Any]:
        return self.privacy.state_dict()

    def restore_extra(self, extra: dict[str, Any]) -> None:
        self.privacy.load_state_dict(extra)

    def _evaluate(self) -> None:
        metrics = self.global_model.evaluate(self.params)  # per family, global_state.py
        self.last_eval = {**metrics, "version": self.version}
        self.history.record(
            "evaluation", version=self.version, loss=metrics["loss"], accuracy=metrics["accuracy"],
            num_examples=metrics["num_examples"], in_flight=len(self.in_flight),
        )
        acc = metrics["accuracy"]
        target = self.config.stop.target_accuracy
        if target is not None and acc >= target and self.time_to_target is None:
            self.time_to_target = self.history_time()

    # ------------------------------------------------------------------ stopping
    def _stop_reason(self, now: float) -> str | None:
        stop = self.config.stop
        if stop.max_aggregations is not None and self.version >= stop.max_aggregations:
            return f"reached max_aggregations={stop.max_aggregations}"
        if stop.max_updates is not None and self.num_updates >= stop.max_updates:
            return f"reached max_updates={stop.max_updates}"
        if stop.max_wall_s is not None and now >= stop.max_wall_s:
            return f"reached max_wall_s={stop.max_wall_s}"
        if self.time_to_target is not None:
            return f"reached target_accuracy={stop.target_accuracy}"
        alive = sum(not m.lost for m in self.members.values())
        if alive < self.config.schedule.min_participants:
            return f"only {alive} participants left, min_participants={self.config.schedule.min_participants}"
        if self.tasks_without_update >= STALL_TASKS_PER_PARTICIPANT * max(alive, 1):
            return f"stalled: no update accepted in the last {self.tasks_without_update} finished tasks"
        return None

    def _wait_timeout(self, now: float) -> float | None:
        moments = [self.schedule.deadline()]
        if self.config.stop.max_wall_s is not None:
            moments.append(self.config.stop.max_wall_s)
        if self.config.schedule.task_timeout_s is not None:
            moments += [t.dispatched_at + self.config.schedule.task_timeout_s for t in self.in_flight.values()]
        moments += [m.retry_at for m in self.members.values() if m.retry_at > now and not m.lost]
        moments = [t for t in moments if t is not None]
        return max(0.0, min(moments) - now) if moments else None

    def history_time(self) -> float:
        return time.perf_counter() - self.history.start

    # ------------------------------------------------------------------ set-up
    def _connect_ray(self) -> None:
        if ray.is_initialized():
            return
        opts = self.config.ray
        if opts.address is not None:
            ray.init(address=opts.address, logging_level="WARNING")
        else:
            wanted = sum(g.resources.num_cpus * g.count for g in self.config.groups)
            num_cpus = opts.num_cpus or max(os.cpu_count() or 1, math.ceil(wanted))
            # address="local": never attach by accident to a cluster `ray start` left running
            ray.init(address="local", num_cpus=num_cpus, num_gpus=opts.num_gpus,
                     include_dashboard=False, logging_level="WARNING")
        self._started_ray = True

    def participant_specs(self) -> list[tuple[ParticipantSpec, Any]]:
        """Each participant's spec and its group, in a fixed order (the partition order)."""
        cfg = self.config
        num_partitions = sum(g.count for g in cfg.groups if isinstance(g.data, PartitionData))
        out, partition_index, index = [], 0, 0
        for group in cfg.groups:
            speed = group.system.speed
            speeds = (draw_speeds(speed, group.count) if not isinstance(speed, float)
                      else np.full(group.count, speed))
            for i in range(group.count):
                is_partition = isinstance(group.data, PartitionData)
                spec = ParticipantSpec(
                    name=participant_name(group, i), group=group.name, index_in_group=i,
                    seed=cfg.seed * 100_003 + index, model=group.model, data=group.data,
                    train=group.train, dataset=cfg.dataset,
                    partition_index=partition_index if is_partition else None,
                    num_partitions=num_partitions, num_threads=max(1, int(group.resources.num_cpus)),
                    speed=float(speeds[i]), system=group.system,
                    state_dir=self._private_state_dir(participant_name(group, i), group),
                )
                out.append((spec, group))
                partition_index += is_partition
                index += 1
        return out

    def _private_state_dir(self, name: str, group: Any) -> str | None:
        """Where a participant keeps its private state, on its own node (relative paths
        resolve against that node's temp dir), or None when checkpoints are off. Under
        local DP-SGD always, so a restarted actor keeps counting its privacy budget."""
        policy = self.config.checkpoint
        if policy.every is None and group.train.dp_sgd is None:
            return None
        template = policy.participant_dir or "fedray-state/{run_id}/{name}"
        return template.format(run_id=self.run_id, name=name)

    def _spawn_participants(self) -> None:
        self._check_feasible()
        try:  # placement per group: fail fast, naming the group, if it cannot fit
            check_placement(self.config.groups, ray.nodes())
            self.placements = Placements(self.config.groups)
        except PlacementError as exc:
            raise RunError(str(exc)) from None
        actor_cls = self.privacy.actor_class(Participant)
        pending = {}
        for index, (spec, group) in enumerate(self.participant_specs()):
            res = group.resources
            handle = actor_cls.options(
                **self.placements.actor_options(group, spec.index_in_group)
            ).remote(spec)
            member = Member(spec.name, group.name, index, handle, spec, res.max_restarts)
            self.members[spec.name] = member
            pending[handle.describe.remote()] = member
        deadline = time.perf_counter() + START_TIMEOUT_S
        errors = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.perf_counter()))
            if not ready:
                for member in pending.values():
                    errors.append(f"participant {member.name}: did not start within {START_TIMEOUT_S:.0f}s")
                    member.lost = True
                break
            member = pending.pop(ready[0])
            try:
                member.info = ray.get(ready[0])
            except ray.exceptions.RayError as exc:  # incl. OutOfMemoryError (not a RayTaskError)
                member.lost = True
                errors.append(_setup_error(member.name, exc))
        for message in errors:
            self.history.record("failure", participant=message.split(":")[0].split()[-1], detail=message)
            print(f"fedray: {message}", flush=True)
        alive = sum(not m.lost for m in self.members.values())
        if alive < self.config.schedule.min_participants:
            raise RunError("participants could not start:\n  " + "\n  ".join(errors))

    def _check_feasible(self) -> None:
        """Fail fast, naming the group, when no node could ever host its participants."""
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        for group in self.config.groups:
            res = group.resources
            need = {"CPU": res.num_cpus, "GPU": res.num_gpus, **res.resources}
            if res.memory:
                need["memory"] = res.memory
            need = {k: v for k, v in need.items() if v}
            if not any(all(node.get(k, 0) >= v for k, v in need.items()) for node in nodes):
                have = {k: max((n.get(k, 0) for n in nodes), default=0) for k in need}
                short = [k for k, v in need.items() if have[k] < v]
                raise RunError(
                    f"group {group.name}: no node in the Ray cluster offers "
                    + ", ".join(f"{k}={need[k]:g} (largest node has {have[k]:g})" for k in short)
                )

    def _initial_state(self) -> tuple[Layout, np.ndarray]:
        """What the global state is depends on the strategy family; see
        ``orchestrator/global_state.py`` (weights, shared parts, or soft labels)."""
        alive = [m for m in self.members.values() if not m.lost]
        try:
            self.global_model = build_global_model(self.config, alive, self.strategy)
        except GlobalStateError as exc:
            raise RunError(str(exc)) from None
        return self.global_model.layout, self.global_model.params

    def _release(self) -> None:
        for member in self.members.values():
            ray.kill(member.handle, no_restart=True)
        if getattr(self, "placements", None) is not None:
            self.placements.release()
        self.members_info = {m.name: m.info for m in self.members.values()}
        if self._started_ray:
            ray.shutdown()

    # ------------------------------------------------------------------ results
    def _summarize(self, stop_reason: str) -> None:
        frame = self.history.frame()
        updates = frame[frame.event == "update"]
        evals = frame[frame.event == "evaluation"]
        self.summary = {
            "name": self.config.name,
            "stop_reason": stop_reason,
            "final_accuracy": float(evals.accuracy.iloc[-1]),
            "final_loss": float(evals.loss.iloc[-1]),
            "best_accuracy": float(evals.accuracy.max()),
            "wall_seconds": float(frame.time.iloc[-1]),
            "num_aggregations": int(self.version),
            "num_updates": int(len(updates)),
            "num_dispatched": int((frame.event == "dispatch").sum()),
            "num_failures": int(frame.event.isin(["failure", "timeout", "dropout"]).sum()),
            "num_rejected": int((frame.event == "rejected").sum()),
            "num_late": int((frame.event == "late").sum()),
            "mean_staleness": float(updates.staleness.mean()) if len(updates) else 0.0,
            "participants": len(self.members),
            "participants_lost": sum(m.lost for m in self.members.values()),
            "num_parameters": int(self.layout.size),
            "target_accuracy": self.config.stop.target_accuracy,
            "time_to_target": self.time_to_target,
        }
        dp_sgd = [g.train.dp_sgd for g in self.config.groups if g.train.dp_sgd is not None]
        if dp_sgd:  # local DP-SGD: the most any participant has spent (each one's only grows)
            spent = updates.get("epsilon", pd.Series(dtype=float)).dropna()
            self.summary |= {"dp_sgd_epsilon_max": float(spent.max()) if len(spent) else 0.0,
                             "dp_sgd_delta": max(d.delta for d in dp_sgd)}

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.yaml").write_text(yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False))
        self.history.save(directory)
        (directory / "summary.json").write_text(json.dumps(self.summary, indent=2))
        described = {name: {k: v for k, v in info.items() if k != "layout"}
                     for name, info in self.members_info.items()}
        (directory / "participants.json").write_text(json.dumps(described, indent=2, default=str))
        np.save(directory / "global_params.npy", self.params)


def _first_line(exc: BaseException) -> str:
    """The human part of a Ray error: the original exception's message."""
    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ":" in ln and not ln.startswith(" "):
            return ln.strip()
    return lines[-1].strip() if lines else type(exc).__name__


def _setup_error(name: str, exc: BaseException) -> str:
    text = str(exc)
    marker = "DataError: "
    if marker in text:
        return text[text.rindex(marker) + len(marker):].strip().splitlines()[0]
    return f"participant {name}: could not start: {_first_line(exc)}"
