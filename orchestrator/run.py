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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
import yaml

from actors.participant import Participant
from actors.spec import ParticipantSpec, PartitionData
from actors.system import SimulatedDropout, Unavailable, draw_speeds
from orchestrator.config import RunConfig, participant_name
from orchestrator.evaluation import ServerEvaluator
from orchestrator.history import History
from orchestrator.progress import Progress
from orchestrator.schedules import Task, make_schedule
from strategies.hygiene import clip_to_norm, rejection_reason
from strategies.types import GlobalState, Instructions, Layout, Update

START_TIMEOUT_S = 300.0
"""How long participants may take to start (import torch, load data) before we give up."""


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
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
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
            self._spawn_participants()
            self.layout, self.params = self._initial_state()
            self.evaluator = ServerEvaluator(cfg, cfg.groups[0])
            if self.evaluator.layout != self.layout:
                raise RunError("the evaluation model's layout differs from the participants' model")
            self.strategy = cfg.strategy.build()
            self.schedule = make_schedule(cfg.schedule, cfg.seed)
            self.version = 0
            self.state_ref = ray.put(GlobalState(0, self.params, self.layout))
            self.in_flight: dict[ray.ObjectRef, Task] = {}
            self.buffer: list[Update] = []
            self.next_task_id = 0
            self.num_updates = 0
            self.last_eval: dict[str, float] = {}
            self.time_to_target: float | None = None
            self._evaluate()
            stop_reason = self._loop()
            if self.last_eval.get("version") != self.version:
                self._evaluate()
            self.history.record("stop", version=self.version, detail=stop_reason)
            self._summarize(stop_reason)
        finally:
            if self.progress is not None:
                self.progress.close()
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
            idle = [m.name for m in alive if not m.busy and m.retry_at <= now]
            busy = sum(m.busy for m in alive)
            for name in self.schedule.select(idle, busy, len(alive), now):
                self._dispatch(self.members[name])

            if not self.in_flight:
                if self.buffer or self.schedule.ready(0, now):
                    self._aggregate()  # nothing more can arrive: use what we have
                    continue
                waiting = [m.retry_at for m in alive if m.retry_at > now]
                if not waiting:
                    return "no participant can take work"
                time.sleep(min(waiting) - now)
                continue

            ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=self._wait_timeout(now))
            if ready:  # take everything else that is already done too, without blocking
                rest = [r for r in self.in_flight if r not in ready]
                if rest:
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for ref in ready:
                self._receive(ref)
            if self.schedule.ready(len(self.buffer), self.history_time()):
                self._aggregate()

    # ------------------------------------------------------------------ dispatch/receive
    def _dispatch(self, member: Member) -> None:
        seed = int(np.random.SeedSequence([self.config.seed, member.index, member.tasks]).generate_state(1)[0])
        instructions = Instructions(
            task_id=self.next_task_id,
            version=self.version,
            seed=seed,
            payload=self.strategy.payload,
            proximal_mu=float(self.strategy.task_options().get("proximal_mu", 0.0)),
            options={"run_start": self.run_start_epoch, **self.strategy.task_options()},
        )
        ref = member.handle.train.remote(self.state_ref, instructions)
        task = Task(member.name, self.next_task_id, self.version, self.schedule.round, self.history_time())
        self.in_flight[ref] = task
        member.busy, member.tasks = True, member.tasks + 1
        self.next_task_id += 1
        self.history.record(
            "dispatch", participant=member.name, group=member.group, task_id=task.task_id,
            version=self.version, base_version=self.version, bytes=self.params.nbytes,
            in_flight=len(self.in_flight),
        )

    def _receive(self, ref: ray.ObjectRef) -> None:
        task = self.in_flight.pop(ref)
        member = self.members[task.participant]
        member.busy = False
        self.schedule.task_finished(task)
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
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
            self._failed(member, where, exc)
            return
        member.failures = 0
        staleness = self.version - update.base_version
        where |= {"staleness": staleness, "num_examples": update.num_examples, "bytes": update.nbytes,
                  "train_seconds": update.train_seconds, "simulated_seconds": update.simulated_seconds,
                  "loss": update.metrics.get("train_loss")}
        problem = self._check(update, member)
        if problem:
            self.history.record("rejected", **where, detail=problem)
            return
        admission = self.schedule.admit(task, staleness)
        if not admission.accepted:
            self.history.record("late", **where, detail=admission.reason)
            return
        update.staleness, update.weight = staleness, admission.weight
        self.buffer.append(update)
        self.num_updates += 1
        self.history.record("update", **where, weight=admission.weight, detail=admission.reason or None)

    def _check(self, update: Update, member: Member) -> str | None:
        if update.participant != member.name:
            return f"update claims to be from {update.participant!r}, task went to {member.name!r}"
        problem = rejection_reason(update, self.layout)
        clip = self.config.updates.clip_norm
        if problem is None and clip is not None:
            clip_to_norm(update, clip)
        return problem

    def _failed(self, member: Member, where: dict, exc: Exception, event: str = "failure") -> None:
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
    def _aggregate(self) -> None:
        batch = sorted(self.buffer, key=lambda u: u.task_id)  # arrival order must not matter
        self.buffer = []
        self.schedule.aggregated(self.history_time())
        if not batch:
            self.history.record("round_skipped", version=self.version, detail="no update arrived in time")
            return
        new_params = self.strategy.aggregate(self.params, batch)
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

    def _evaluate(self) -> None:
        metrics = self.evaluator(self.params, self.layout)
        self.last_eval = {**metrics, "version": self.version}
        self.history.record(
            "evaluation", version=self.version, loss=metrics["loss"], accuracy=metrics["accuracy"],
            num_examples=self.evaluator.num_examples, in_flight=len(self.in_flight),
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
                )
                out.append((spec, group))
                partition_index += is_partition
                index += 1
        return out

    def _spawn_participants(self) -> None:
        self._check_feasible()
        actor_cls = ray.remote(Participant)
        pending = {}
        for index, (spec, group) in enumerate(self.participant_specs()):
            res = group.resources
            handle = actor_cls.options(
                num_cpus=res.num_cpus, num_gpus=res.num_gpus, memory=res.memory,
                resources=res.resources or None, max_restarts=res.max_restarts,
                max_task_retries=0,
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
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
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
        alive = [m for m in self.members.values() if not m.lost]
        layouts = {m.name: m.info["layout"] for m in alive}
        first = alive[0]
        for name, layout in layouts.items():
            if layout != layouts[first.name]:
                raise RunError(
                    f"participants {first.name} and {name} have different model layouts "
                    f"({layouts[first.name].size} vs {layout.size} parameters); weight-averaging "
                    "strategies need one architecture for all groups"
                )
        params = ray.get(first.handle.initial_parameters.remote())
        return layouts[first.name], np.asarray(params, dtype=np.float32)

    def _release(self) -> None:
        for member in self.members.values():
            ray.kill(member.handle, no_restart=True)
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
