"""The participants' lifecycle on the driver: spawn, dispatch, receive, failures, timeouts.

The run loop decides *what* to do (which participant gets work, what an arrival means for
the model); this module does it to the Ray actors and turns every way a task can end
into either an update or a history event. Ray's outcomes are told apart by exception
type, never by searching error text:

- the participant's own exceptions (``SimulatedDropout``, ``Unavailable``,
  ``PrivacyBudgetSpent``, ``DataError``) arrive as ``RayTaskError`` instances of them;
- ``ActorUnavailableError``: Ray is restarting the actor (``max_restarts``), so back off;
- any other ``RayActorError``: the actor died (crash, ``ray.kill``, lost node, OOM kill);
- any other ``RayError``: the task failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray

from actors.data.load import DataError, partition_problem
from actors.participant.cohort import TRAINED_TOGETHER
from actors.participant.participant import Participant
from actors.participant.pool import TASK_THREADS_MAX, PoolWorker, task_threads
from actors.participant.private_state import PrivateStateError, Rollback
from actors.participant.system import SimulatedDropout, Unavailable, draw_speeds, simulated_duration
from actors.spec.data import FileData, FittedTransform, PartitionData
from actors.spec.participant import ParticipantSpec
from actors.training.local_dp import PrivacyBudgetSpent
from orchestrator.cluster.placement import PlacementError, Placements, check_placement
from orchestrator.cluster.traces import TraceError, participant_systems
from orchestrator.config import Group, RunConfig, participant_name
from orchestrator.loop.clock import Clock, TaskHung
from orchestrator.loop.schedules import Task
from orchestrator.records.history import History
from orchestrator.records.progress import one_line_per_cause
from orchestrator.server.preprocessing import PreprocessingError, fit_transform, scale_warning
from orchestrator.server.privacy import PrivacyHooks, SecureAggregationAbort
from strategies.client import Plan, Work
from strategies.types import Instructions, Update

START_TIMEOUT_S = 300.0
"""How long participants may take to start (import torch, load data) before we give up."""

DISCARD_TIMEOUT_S = 10.0
"""How long the end of a run waits for participants to delete their private state."""

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
    restarting: bool = False
    failures: int = 0
    tasks: int = 0
    retry_at: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    pooled: bool = False
    """Served by a pool worker: every call names the participant by passing its spec."""
    saved_task: int | None = None
    """The last task after which it reported saving its private state."""
    rollback_before: int = 0
    """Where a resume from the latest checkpoint rolls its private state back to
    (:class:`actors.participant.private_state.Rollback`)."""

    def call(self, method: str, *args: Any, **options: Any) -> ray.ObjectRef:
        """``handle.method.options(**options).remote(*args)``, addressed to this participant
        on a pool worker."""
        extra = (self.spec,) if self.pooled else ()
        bound = getattr(self.handle, method)
        return (bound.options(**options) if options else bound).remote(*args, *extra)

    def where(self, task: Task, version: int) -> dict[str, Any]:
        """The history fields every event about one of its tasks carries."""
        return {"participant": self.name, "group": self.group, "task_id": task.task_id,
                "version": version, "base_version": task.base_version}


@dataclass
class Arrival:
    """A finished task: its update, or None when it ended in an event already recorded."""

    task: Task
    member: Member
    update: Update | None

    def fields(self, version: int, in_flight: int) -> dict[str, Any]:
        """The history fields of this arrival's update (or rejection, or late drop)."""
        u = self.update
        assert u is not None
        out = self.member.where(self.task, version) | {
            "in_flight": in_flight, "staleness": version - u.base_version,
            "num_examples": u.num_examples, "bytes": u.nbytes,
            "train_seconds": u.train_seconds, "simulated_seconds": u.simulated_seconds,
            "loss": u.metrics.get("train_loss"), "samples": u.metrics.get("samples"),
            "batched": u.metrics.get(TRAINED_TOGETHER)}
        if "dp_sgd_epsilon" in u.metrics:  # local DP-SGD: the participant's budget spent so far
            out["epsilon"] = u.metrics["dp_sgd_epsilon"]
        return out


def task_seed(run_seed: int, index: int, tasks_done: int) -> int:
    """Per-task seed from the run seed, the participant's index and its task count: the
    same run gives every task the same seed, whatever the timing.

    >>> task_seed(0, 1, 2) == task_seed(0, 1, 2) != task_seed(0, 1, 3)
    True
    """
    return int(np.random.SeedSequence([run_seed, index, tasks_done]).generate_state(1)[0])


def error_message(exc: BaseException) -> str:
    """The human part of a Ray error: the participant's own exception and its message,
    or the first line of Ray's explanation."""
    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and cause is not None:
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not isinstance(exc, ray.exceptions.RayError):  # a participant's own error, returned as a value
        return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return lines[0] if lines else type(exc).__name__


class Participants:
    """The run's participant actors and their tasks in flight."""

    def __init__(self, config: RunConfig, history: History, privacy: PrivacyHooks,
                 clock: Clock) -> None:
        self.config = config
        self.history = history
        self.privacy = privacy
        self.actor_class = privacy.actor_class(Participant)
        self.clock = clock
        self.members: dict[str, Member] = {}
        self.in_flight: dict[ray.ObjectRef, Task] = {}
        self.placements: Placements | None = None
        self.transform: FittedTransform | None = None
        """The run's fitted preprocessing (``preprocess:``), or None."""
        self._hung: dict[str, str] = {}  # participant -> why wait() killed its task
        self._backed_off: dict[int, float] = {}  # actor -> when the driver last waited out its restart
        self.client = config.strategy.build().client()
        """The strategy's client half, asked how much work a task plans (simulated clock)."""

    # -- start and stop ----------------------------------------------------------------
    def spawn(self, specs: list[tuple[ParticipantSpec, Group]], transform: FittedTransform | None = None) -> None:
        """Start every participant; each loads its own data, preprocessed with the run's
        transform when it has one (``transform``: fitted before, on resume; else fitted
        here from the sites' statistics). Raises :class:`RunError` when fewer than
        ``min_participants`` could start, naming each one that did not."""
        self._create(specs)
        if self.config.preprocess is not None:
            self.transform = transform or self._fit()
            for member in self.members.values():
                member.spec = member.spec.model_copy(update={"transform": self.transform})
        self._describe()
        if self.config.preprocess is None and (warning := scale_warning([m.info for m in self.alive()])):
            self.history.record("warning", detail=warning)
            print(f"fedray: warning: {warning}", flush=True)

    def _fit(self) -> FittedTransform:
        """Federated preprocessing (``orchestrator/server/preprocessing.py``), from every site."""
        try:
            return fit_transform(self.config.preprocess, self.members, self.privacy,
                                 self._target_columns() if self.config.standardizes_target else [])
        except (PreprocessingError, SecureAggregationAbort) as exc:
            raise RunError(f"preprocessing: {exc}") from None

    def _target_columns(self) -> list[str]:
        data, dataset = self.config.groups[0].data, self.config.dataset
        if isinstance(data, FileData):
            return data.label_columns
        assert dataset is not None  # the config allows preprocess on files and tables only
        return [dataset.label_column] if isinstance(dataset.label_column, str) else list(dataset.label_column)

    def _create(self, specs: list[tuple[ParticipantSpec, Group]]) -> None:
        """The actors (or pool workers) for every participant; nothing set up yet."""
        self._check_feasible()
        problem = partition_problem(self.config.dataset, specs[0][0].num_partitions) if specs else None
        if problem:
            raise RunError(problem)
        try:  # placement per group: fail fast, naming the group, if it cannot fit
            check_placement(self.config.groups, ray.nodes())
            self.placements = Placements(self.config.groups)
        except PlacementError as exc:
            raise RunError(str(exc)) from None
        pools = {g.name: self._start_pool(g) for g in self.config.groups if g.hosting == "pool"}
        for index, (spec, group) in enumerate(specs):
            if group.name in pools:  # a participant's tasks always go to the same worker
                workers = pools[group.name]
                handle, restarts = workers[spec.index_in_group % len(workers)], -1
            else:
                handle = self.actor_class.options(**self.placements.actor_options(group, spec.index_in_group)).remote(spec)
                restarts = group.resources.max_restarts
            self.members[spec.name] = Member(spec.name, group.name, index, handle, spec, restarts,
                                             pooled=group.name in pools)

    def _describe(self) -> None:
        """Each participant sets itself up and describes itself; a pool worker describes
        all it serves in one call."""
        pending: dict[ray.ObjectRef, list[Member]] = {}
        served: dict[Any, list[Member]] = {}  # pool worker -> its participants
        for member in self.members.values():
            if member.pooled:
                served.setdefault(member.handle, []).append(member)
            else:
                pending[member.call("describe", self.transform)] = [member]
        for worker, members in served.items():  # one call per worker, however many it serves
            pending[worker.describe_all.remote([m.spec for m in members])] = members
        errors = self._await_start(pending)
        for name, message in errors:
            self.history.record("failure", participant=name, detail=message)
        for line in one_line_per_cause(errors):
            print(f"fedray: {line}", flush=True)
        if len(self.alive()) < self.config.schedule.min_participants:
            raise RunError("participants could not start:\n  " + "\n  ".join(one_line_per_cause(errors)))

    def _start_pool(self, group: Group) -> list[Any]:
        """The group's pool workers, each with the group's resources. Ray restarts a
        worker that dies: its participants' private state is in their own directories."""
        workers = []
        served = -(-group.count // group.pool_size)  # participant i goes to worker i % pool_size
        for i in range(group.pool_size):
            options = self.placements.actor_options(group, i) | {"max_restarts": -1,
                                                                  "max_concurrency": task_threads(served)}
            workers.append(self.privacy.actor_class(PoolWorker).options(**options).remote(group.cache_size, group.cache_mb))
        return workers

    def _await_start(self, pending: dict[ray.ObjectRef, list[Member]]) -> list[tuple[str, str]]:
        """Each participant's description, or why it could not start (a bad data path
        comes back as its own ``DataError``, naming it and the path)."""
        deadline = time.perf_counter() + START_TIMEOUT_S
        errors = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.perf_counter()))
            if not ready:
                for member in (m for members in pending.values() for m in members):
                    member.lost = True
                    errors.append((member.name, f"participant {member.name}: did not start within {START_TIMEOUT_S:.0f}s"))
                break
            members = pending.pop(ready[0])
            try:
                got = ray.get(ready[0])
                outcomes = got if members[0].pooled else [got]
            except DataError as exc:
                outcomes = [exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc]
            except ray.exceptions.RayError as exc:  # incl. OutOfMemoryError (not a RayTaskError)
                message = error_message(exc)
                outcomes = [RuntimeError(f"participant {m.name}: could not start: {message}") for m in members]
            for member, outcome in zip(members, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    member.lost = True
                    errors.append((member.name, str(outcome)))
                else:
                    member.info = outcome
        return errors

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

    def release(self, discard_state: bool = False) -> None:
        """Stop every actor; with ``discard_state`` (a run that cannot be resumed) each
        participant first deletes its private state on its own node."""
        if discard_state:
            self._discard_state()
        for handle in {id(m.handle): m.handle for m in self.members.values()}.values():
            ray.kill(handle, no_restart=True)
        if self.placements is not None:
            self.placements.release()

    def _discard_state(self) -> None:
        """One call per actor (a pool worker gets its participants' specs); a dead actor's
        call fails, and Ray's own clean-up of the temp directory is all that is left."""
        served: dict[int, tuple[Any, list[ParticipantSpec]]] = {}
        refs = []
        for member in self.members.values():
            if member.spec.state_dir is None:
                continue
            if member.pooled:
                served.setdefault(id(member.handle), (member.handle, []))[1].append(member.spec)
            elif not member.lost:
                refs.append(member.handle.discard_private_state.remote())
        refs += [handle.discard_private_state.remote(specs) for handle, specs in served.values()]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=DISCARD_TIMEOUT_S)

    # -- who can work ------------------------------------------------------------------
    def alive(self) -> list[Member]:
        return [m for m in self.members.values() if not m.lost]

    def idle(self, now: float, ready: Callable[[Member], bool]) -> list[str]:
        """Live participants with nothing in flight, not backing off, and ``ready``."""
        return [m.name for m in self.alive() if not m.busy and m.retry_at <= now and ready(m)]

    def next_return(self, now: float) -> list[float]:
        """Moments a backing-off participant can take work again."""
        return [m.retry_at for m in self.alive() if m.retry_at > now]

    # -- tasks -------------------------------------------------------------------------
    def dispatch(self, member: Member, state_ref: ray.ObjectRef, instructions: Instructions,
                 task: Task) -> None:
        self._track(member.call("train", state_ref, instructions), member, instructions, task)

    def dispatch_all(self, state_ref: ray.ObjectRef, tasks: list[tuple[Member, Instructions, Task]]) -> None:
        """Send ``tasks``, one call each; the ones for participants of a batched pool group
        that share a worker name one cohort, so the worker trains them together
        (actors/participant/cohort.py), and each still comes back as soon as it ends."""
        batched = {g.name for g in self.config.groups if g.batches}  # (the config pre-flight resolved)
        together: dict[int, list[tuple[Member, Instructions, Task]]] = {}
        for item in tasks:
            member = item[0]
            if member.pooled and member.group in batched:
                together.setdefault(id(member.handle), []).append(item)
            else:
                self.dispatch(member, state_ref, *item[1:])
        for items in together.values():
            for start in range(0, len(items), TASK_THREADS_MAX):  # a cohort never outnumbers the threads
                chunk = items[start:start + TASK_THREADS_MAX]
                cohort = (chunk[0][2].task_id, len(chunk)) if len(chunk) > 1 else None
                for member, instructions, task in chunk:
                    ref = member.handle.train.remote(state_ref, instructions, member.spec, cohort)
                    self._track(ref, member, instructions, task)

    def _track(self, ref: ray.ObjectRef, member: Member, instructions: Instructions, task: Task) -> None:
        self.in_flight[ref] = task
        self.clock.started(ref, task.dispatched_at, task.task_id, instructions.simulated_seconds or 0.0)
        member.busy, member.tasks = True, member.tasks + 1

    def simulated_seconds(self, member: Member, local_steps: int | None, nbytes: int, version: int) -> float | None:
        """Under the simulated clock, how long this task lasts: the system model on the
        samples the strategy's client half plans for the group's local work (Ditto trains
        twice, FedSGD takes one batch's gradient); None under the wall clock."""
        if not self.clock.simulated:
            return None
        train = member.spec.train
        dataset = self.config.dataset
        plan = Plan(Work(0, train.local_epochs, local_steps or train.local_steps), train.batch_size,
                    member.info["num_examples"], dataset.public_size if dataset is not None else 0, version)
        samples = self.client.planned_samples(plan)
        return simulated_duration(member.spec.system, member.spec.speed, samples, nbytes)

    def task_seed(self, member: Member) -> int:
        return task_seed(self.config.seed, member.index, member.tasks)

    def wait(self, timeout: float | None) -> list[ray.ObjectRef]:
        """The tasks that land next by the run's clock (none within ``timeout``). A task the
        simulated clock gave up on (:class:`TaskHung`) has its actor killed and lands as
        a failure, recorded as a timeout."""
        try:
            return self.clock.wait(list(self.in_flight), timeout)
        except TaskHung as exc:
            member = self.members[self.in_flight[exc.ref].participant]
            self._hung[member.name] = str(exc)
            ray.kill(member.handle, no_restart=member.max_restarts == 0)
            return [exc.ref]

    def receive(self, ref: ray.ObjectRef, version: int) -> Arrival:
        """Fetch a finished task; record every outcome that is not an update."""
        task = self.in_flight.pop(ref)
        member = self.members[task.participant]
        member.busy = False
        where = member.where(task, version) | {"in_flight": len(self.in_flight)}
        try:
            update: Update = ray.get(ref)
        except SimulatedDropout as exc:
            self.history.record("dropout", **where, detail=error_message(exc))
        except Unavailable as exc:
            member.retry_at = exc.retry_at
            self.history.record("unavailable", **where, detail=error_message(exc))
        except PrivacyBudgetSpent as exc:  # the silo's choice, not a failure: it leaves for good
            member.lost = True
            self.history.record("participant_lost", **where, detail=error_message(exc))
        except ray.exceptions.RayError as exc:  # actor/task errors, and Ray's OOM kills too
            self.failed(member, where, exc)
        else:
            member.failures, member.restarting = 0, False
            return Arrival(task, member, update)
        return Arrival(task, member, None)

    def failed(self, member: Member, where: dict, exc: Exception, event: str = "failure") -> None:
        """Count a failure; give up on the participant after ``max_failures`` in a row, or
        at once when its actor died and may not restart."""
        self.privacy.forget(member.name)  # ask again: a restarted actor may have a new masking key
        if (hung := self._hung.pop(member.name, None)) is not None:  # killed by wait()
            exc, event = ray.exceptions.RayActorError(error_msg=hung), "timeout"
        if isinstance(exc, ray.exceptions.ActorUnavailableError):
            # Ray is restarting the actor; calls fail at once until it is back. Back off. Its
            # death counts once: here if no task of its was in flight when it died.
            self._back_off(member)
            if member.restarting:
                self.history.record("unavailable", **where, detail="actor is restarting")
                return
            member.restarting = True
            self.history.record("failure", **where, detail="actor died; Ray is restarting it")
            return
        member.failures += 1
        died = isinstance(exc, ray.exceptions.RayActorError)
        member.restarting = died and member.max_restarts != 0
        self.history.record(event, **where, detail=error_message(exc))
        if (died and member.max_restarts == 0) or member.failures >= self.config.schedule.max_failures:
            member.lost = True
            self.history.record(
                "participant_lost", participant=member.name, group=member.group, version=where["version"],
                detail="actor died" if died else f"{member.failures} consecutive failures",
            )

    def _back_off(self, member: Member) -> None:
        """Leave a restarting actor alone for ``RESTART_BACKOFF_S``. A restart takes real
        seconds, so under the simulated clock the driver waits them out in real time (once
        per actor, however many participants it serves) and simulated time stands still:
        the history must not depend on how fast the machine restarts a process."""
        if not self.clock.simulated:
            member.retry_at = self.clock.now() + RESTART_BACKOFF_S
            return
        last = self._backed_off.get(id(member.handle))
        if last is None or time.monotonic() - last > RESTART_BACKOFF_S:
            time.sleep(RESTART_BACKOFF_S)
            self._backed_off[id(member.handle)] = time.monotonic()

    def reap_timeouts(self, now: float, version: int) -> list[Task]:
        """End tasks past ``task_timeout_s``, each charged to its own participant. A
        dedicated actor is killed (a hung actor would queue every later task behind it);
        Ray restarts it if its group allows. A pool worker's task is cancelled alone: the
        worker and its other participants' tasks go on (actors/participant/pool.py). Returns the tasks
        ended."""
        limit = self.config.schedule.task_timeout_s
        if limit is None:
            return []
        ended = []
        for ref, task in list(self.in_flight.items()):
            if now - task.dispatched_at < limit:
                continue
            del self.in_flight[ref]
            member = self.members[task.participant]
            member.busy = False
            if self.clock.simulated:  # the system model made it too slow: nothing hung
                self.clock.dropped(ref)
                self.history.record("timeout", **member.where(task, version),
                                    detail=f"simulated task outlasts task_timeout_s={limit}")
                ended.append(task)
                continue
            if member.pooled:
                ray.cancel(ref)
                self.failed(member, member.where(task, version),
                            TimeoutError(f"task exceeded task_timeout_s={limit}; its pool worker abandons it"),
                            event="timeout")
                ended.append(task)
                continue
            ray.kill(member.handle, no_restart=member.max_restarts == 0)
            self.failed(member, member.where(task, version),
                        ray.exceptions.RayActorError(error_msg=f"task exceeded task_timeout_s={limit}"),
                        event="timeout")
            ended.append(task)
        return ended

    def deadlines(self) -> list[float]:
        """When each task in flight times out."""
        limit = self.config.schedule.task_timeout_s
        return [] if limit is None else [t.dispatched_at + limit for t in self.in_flight.values()]

    # -- checkpoints -------------------------------------------------------------------
    def records(self, next_task_id: int) -> dict[str, dict[str, Any]]:
        """What a checkpoint keeps per participant: per-task seeds derive from ``tasks``; a
        resume rolls its private state back to before its first task in flight (the
        checkpoint forgets those), else before ``next_task_id``."""
        first_in_flight: dict[str, int] = {}
        for task in self.in_flight.values():
            first_in_flight[task.participant] = min(task.task_id, first_in_flight.get(task.participant, task.task_id))
        return {name: {"tasks": m.tasks, "failures": m.failures, "lost": m.lost, "saved_task": m.saved_task,
                       "rollback_before": first_in_flight.get(name, next_task_id)}
                for name, m in self.members.items()}

    def checkpointed(self, records: dict[str, dict[str, Any]]) -> None:
        """A checkpoint of ``records`` is on disk: participants may drop older versions."""
        for name, saved in records.items():
            self.members[name].rollback_before = saved["rollback_before"]

    def rollback_before(self, member: Member) -> int | None:
        """What a task tells the participant to keep (None: no checkpoints, only the newest)."""
        return None if self.config.checkpoint.every is None else member.rollback_before

    def restore(self, records: dict[str, dict[str, Any]]) -> None:
        """Take the checkpoint's counters back, and roll every participant's private state
        back to the version the checkpoint names; :class:`RunError` naming each participant
        (and its file) whose state is missing or older than the checkpoint expects."""
        unknown = sorted(set(records) - set(self.members))
        if unknown:
            raise ValueError(f"checkpoint names participants not in this config: {unknown[:5]}")
        for name, saved in records.items():
            member = self.members[name]
            member.tasks, member.failures = saved["tasks"], saved["failures"]
            member.lost = member.lost or saved["lost"]
        if all("rollback_before" in saved for saved in records.values()):  # (older checkpoints lack it)
            self.checkpointed(records)
            self._roll_back(records)

    def _roll_back(self, records: dict[str, dict[str, Any]]) -> None:
        pending = {}
        for name, saved in records.items():
            member = self.members[name]
            member.saved_task = saved["saved_task"]
            if not member.lost and member.spec.state_dir is not None:
                rollback = Rollback(saved["rollback_before"], saved["saved_task"])
                pending[member.call("restore_private_state", rollback)] = member
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=START_TIMEOUT_S)
        problems = [f"participant {m.name}: its private state was not restored within {START_TIMEOUT_S:.0f}s"
                    for ref, m in pending.items() if ref not in ready]
        for ref in ready:
            try:
                ray.get(ref)
            except PrivateStateError as exc:
                problems.append(str(exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc))
            except ray.exceptions.RayError as exc:
                problems.append(f"participant {pending[ref].name}: {error_message(exc)}")
        if problems:
            raise RunError("cannot resume:\n  " + "\n  ".join(problems))


def participant_specs(config: RunConfig, run_id: str) -> list[tuple[ParticipantSpec, Group]]:
    """Each participant's spec and its group, in a fixed order (the partition order).
    A group's device trace gives each participant its own speed and system (bandwidth,
    availability windows), read here on the driver; a bad trace is a :class:`RunError`."""
    num_partitions = sum(g.count for g in config.groups if isinstance(g.data, PartitionData))
    out, partition_index, index = [], 0, 0
    for group in config.groups:
        speed = group.system.speed
        speeds = draw_speeds(speed, group.count) if not isinstance(speed, float) else np.full(group.count, speed)
        systems = [group.system] * group.count
        if group.system.trace is not None:
            try:
                traced = participant_systems(group.system, group.name,
                                             [participant_name(group, i) for i in range(group.count)])
            except TraceError as exc:
                raise RunError(str(exc)) from None
            speeds, systems = np.array([s for s, _ in traced]), [system for _, system in traced]
        for i in range(group.count):
            is_partition = isinstance(group.data, PartitionData)
            name = participant_name(group, i)
            spec = ParticipantSpec(
                name=name, group=group.name, index_in_group=i,
                seed=config.seed * 100_003 + index, model=group.model, data=group.data,
                train=group.train, dataset=config.dataset, task=config.task, preprocess=config.preprocess,
                partition_index=partition_index if is_partition else None,
                num_partitions=num_partitions, num_threads=max(1, int(group.resources.num_cpus)),
                num_gpus=group.resources.num_gpus, gpu_memory_gb=group.resources.gpu_memory_gb,
                speed=float(speeds[i]), system=systems[i],
                strategy=config.strategy.name, strategy_options=config.strategy.options,
                state_dir=private_state_dir(config, run_id, name, group),
            )
            out.append((spec, group))
            partition_index += is_partition
            index += 1
    return out


def private_state_dir(config: RunConfig, run_id: str, name: str, group: Group) -> str | None:
    """Where a participant keeps its private state, on its own node (relative paths
    resolve against that node's temp dir), or None when checkpoints are off. Under
    local DP-SGD always, so a restarted actor keeps counting its privacy budget, and for
    pooled participants always, so any worker that serves one next goes on from it."""
    policy = config.checkpoint
    if policy.every is None and group.train.dp_sgd is None and group.hosting != "pool":  # auto: not yet pooled
        return None
    template = policy.participant_dir or "fedray-state/{run_id}/{name}"
    return template.format(run_id=run_id, name=name)
