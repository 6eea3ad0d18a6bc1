"""The participants' lifecycle on the driver: start (spawn, describe, fit the preprocessing),
stop (release, discard private state), and what a checkpoint keeps of them."""

from __future__ import annotations

import functools
import logging
from typing import Any

import ray

from actors.data.load import partition_problem
from actors.participant.pool import PoolWorker, task_threads
from actors.participant.private_state import PrivateStateError, Rollback
from actors.spec.data import FileData, FittedTransform
from actors.spec.participant import ParticipantSpec
from orchestrator.cluster import batching
from orchestrator.cluster.describe import START_TIMEOUT_S, describe_all
from orchestrator.cluster.fits import PlacementError, bundle, check_placement
from orchestrator.cluster.members import Member, RunError, by_worker, error_message
from orchestrator.cluster.placement import Placements
from orchestrator.cluster.warm_workers import WARM, add, worker_key
from orchestrator.cluster.worker_sums import WorkerSums, sums_in_workers
from orchestrator.config import Group, RunConfig
from orchestrator.loop.clock import Clock
from orchestrator.loop.schedules import Task
from orchestrator.records.history import History
from orchestrator.records.progress import one_line_per_cause
from orchestrator.server.preprocessing import PreprocessingError, fit_transform, scale_warning
from orchestrator.server.privacy import PrivacyHooks, SecureAggregationAbort

log = logging.getLogger("fedray")
"""Notices for the person running fedray; ``fedray run --quiet`` turns them off."""

DISCARD_TIMEOUT_S = 10.0
"""How long the end of a run waits for participants to delete their private state."""


class Lifecycle:
    """Starting, stopping and checkpointing the run's participants; :class:`Participants`
    adds their tasks."""

    def __init__(self, config: RunConfig, history: History, privacy: PrivacyHooks,
                 clock: Clock) -> None:
        self.config = config
        self.history = history
        self.privacy = privacy
        self.clock = clock
        self.members: dict[str, Member] = {}
        self.in_flight: dict[ray.ObjectRef, Task] = {}
        self.placements: Placements | None = None
        self.transform: FittedTransform | None = None
        """The run's fitted preprocessing (``preprocess:``), or None."""
        self._hung: dict[str, str] = {}  # participant -> why wait() killed its task
        self.sums = WorkerSums()
        """The round sums pool workers make, where this run allows them (set at :meth:`spawn`)."""
        self._backed_off: dict[int, float] = {}  # actor -> when the driver last waited out its restart
        self._worker_keys: dict[int, tuple[str | None, int, dict[str, float]]] = {}  # pool worker -> its settings (warm_workers)
        self.client = config.strategy.build().client()
        """The strategy's client half, asked how much work a task plans (simulated clock)."""

    # -- start and stop ----------------------------------------------------------------
    def spawn(self, specs: list[tuple[ParticipantSpec, Group]], transform: FittedTransform | None = None) -> None:
        """Start every participant; each loads its own data, preprocessed with the run's
        transform when it has one (``transform``: fitted before, on resume, so it is in the
        specs the actors start from; else fitted here from the sites' statistics and sent
        once to each, see :meth:`send_transform`). Raises :class:`RunError` when fewer than
        ``min_participants`` could start, naming each one that did not."""
        if transform is not None:
            specs = [(spec.model_copy(update={"transform": transform}), group) for spec, group in specs]
        self.sums = WorkerSums(sums_in_workers(self.config, self.privacy.active), self.config.updates.clip_norm)
        self._create(specs)
        if self.config.preprocess is not None:
            self.transform = transform or self._fit()
            for member in self.members.values():
                self.send_transform(member)
        self._describe()
        if self.config.preprocess is None and (warning := scale_warning([m.info for m in self.alive()])):
            self.history.record("warning", detail=warning)
            log.warning("warning: %s", warning)

    def send_transform(self, member: Member) -> None:
        """The fitted transform goes into the participant's spec: the driver's copy, which
        a pool worker gets with every call, and a dedicated actor's own (its calls run in
        order, so its next task sets up with it). After the fit, and again when an actor
        Ray restarted from its first spec says it lacks it."""
        member.spec = member.spec.model_copy(update={"transform": self.transform})
        if not member.pooled:
            member.call("adopt", self.transform)

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
        problem = partition_problem(self.config.dataset, specs[0][0].num_partitions) if specs else None
        if problem:
            raise RunError(problem)
        try:  # fail fast, naming the group, if it can never be placed
            check_placement(self.config.groups, ray.nodes())
            self.placements = Placements(self.config.groups)
        except PlacementError as exc:
            raise RunError(str(exc)) from None
        pools = self._start_pools()
        for index, (spec, group) in enumerate(specs):
            if group.name in pools:  # a participant's tasks always go to the same worker
                workers = pools[group.name]
                handle, restarts = workers[spec.index_in_group % len(workers)], -1
            else:
                handle = self._dedicated_class.options(**self.placements.actor_options(group, spec.index_in_group)).remote(spec)
                restarts = group.resources.max_restarts
            self.members[spec.name] = Member(spec.name, group.name, index, handle, spec, restarts,
                                             pooled=group.name in pools)

    def _describe(self) -> None:
        """Each participant sets itself up and describes itself: a dedicated actor in a call
        of its own, a pool worker's participants all in one call (:mod:`~orchestrator.cluster.describe`)."""
        members = list(self.members.values())
        errors = describe_all(members, frozenset(g.name for g in self.config.groups if g.batched is True))
        batching.choose(members, self.config, self.history)
        for name, message in errors:
            self.history.record("failure", participant=name, detail=message)
        for line in one_line_per_cause(errors):
            log.warning(line)
        if len(self.alive()) < self.config.schedule.min_participants:
            raise RunError("participants could not start:\n  " + "\n  ".join(one_line_per_cause(errors)))

    @functools.cached_property
    def _dedicated_class(self) -> Any:
        """The dedicated participants' actor class, made on first use: its module imports
        torch, which a driver whose participants all live on pool workers never needs."""
        from actors.participant.participant import Participant

        return self.privacy.actor_class(Participant)

    def _start_pools(self) -> dict[str, list[Any]]:
        """Each pool group's workers, each with the group's resources: idle ones an earlier
        run of this process left with the same settings (:mod:`~orchestrator.cluster.warm_workers`),
        else new. Ray restarts a worker that dies: its participants' private state is in
        their own directories."""
        wanted = []  # (group, key, options) per worker
        for group in (g for g in self.config.groups if g.hosting == "pool"):
            served = -(-group.count // group.pool_size)  # participant i goes to worker i % pool_size
            for i in range(group.pool_size):
                options = self.placements.actor_options(group, i) | {"max_restarts": -1,
                                                                      "max_concurrency": task_threads(served)}
                key = worker_key(options, self.privacy.secure, group.cache_size, group.cache_mb)
                wanted.append((group, key, options))
        claimed = WARM.claim([(key, options["max_concurrency"], bundle(group)) for group, key, options in wanted],
                             self._dedicated_demand())
        pools: dict[str, list[Any]] = {}
        for (group, key, options), handle in zip(wanted, claimed, strict=True):
            if handle is None:
                cls = self.privacy.actor_class(PoolWorker)
                handle = cls.options(**options, **WARM.options(key, options["max_concurrency"])).remote(
                    group.cache_size, group.cache_mb)
            self._worker_keys[id(handle)] = (key, options["max_concurrency"], bundle(group))
            pools.setdefault(group.name, []).append(handle)
        return pools

    def _dedicated_demand(self) -> dict[str, float] | None:
        """What the run's dedicated actors ask Ray for; None when a placement group holds them."""
        total: dict[str, float] = {}
        for group in (g for g in self.config.groups if g.hosting != "pool"):
            if group.name in self.placements.groups:
                return None
            total = add(total, {k: v * group.count for k, v in bundle(group).items()})
        return total

    def release(self, discard_state: bool = False) -> None:
        """Stop every dedicated actor and keep the pool workers warm for a later run of
        this process; with ``discard_state`` (a run that cannot be resumed) each
        participant first deletes its private state on its own node."""
        if discard_state:
            self._discard_state()
        for handle in {id(m.handle): m.handle for m in self.members.values()}.values():
            if id(handle) in self._worker_keys:
                WARM.keep(handle, *self._worker_keys[id(handle)])
            else:
                ray.kill(handle, no_restart=True)
        if self.placements is not None:
            self.placements.release()

    def _discard_state(self) -> None:
        """One call per actor (a pool worker gets its participants' specs); a dead actor's
        call fails, and Ray's own clean-up of the temp directory is all that is left."""
        keeping = [m for m in self.members.values() if m.spec.state_dir is not None]
        refs = [m.handle.discard_private_state.remote() for m in keeping if not m.pooled and not m.lost]
        refs += [group[0].handle.discard_private_state.remote([m.spec for m in group]) for group in by_worker(keeping)]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=DISCARD_TIMEOUT_S)

    # -- who can work ------------------------------------------------------------------
    def alive(self) -> list[Member]:
        return [m for m in self.members.values() if not m.lost]

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
