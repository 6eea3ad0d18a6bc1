"""The participants' tasks on the driver: dispatch, receive, failures, timeouts.

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
from functools import cached_property

import ray

from actors.data.tables import TransformMissing
from actors.participant.pool import TASK_THREADS_MAX
from actors.participant.system import SimulatedDropout, Unavailable, simulated_duration
from orchestrator.cluster.lifecycle import Lifecycle
from orchestrator.cluster.members import (
    RESTART_BACKOFF_S,
    Arrival,
    Member,
    error_message,
    task_seed,
    worker_restarted,
)
from orchestrator.cluster.simulated_costs import TaskCosts
from orchestrator.loop.clock import TaskHung
from orchestrator.loop.schedules import Task
from strategies.client import Plan, Work
from strategies.privacy import PrivacyBudgetSpent
from strategies.types import Instructions, Update


class Participants(Lifecycle):
    """The run's participant actors and their tasks in flight."""

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
        """Send ``tasks``, one call each; those sharing a pool worker that batches
        (``Member.batches``) name one cohort, so the worker trains them together
        (actors/participant/cohort.py), and each still comes back as soon as it ends."""
        together: dict[int, list[tuple[Member, Instructions, Task]]] = {}
        for item in tasks:
            member = item[0]
            if member.pooled and (member.batches or self.sums.on):
                together.setdefault(id(member.handle), []).append(item)
            else:
                self.dispatch(member, state_ref, *item[1:])
        for items in together.values():
            for start in range(0, len(items), TASK_THREADS_MAX):  # a cohort never outnumbers the threads
                chunk = items[start:start + TASK_THREADS_MAX]
                cohort = (chunk[0][2].task_id, len(chunk)) if len(chunk) > 1 and chunk[0][0].batches else None
                if self.sums.on:  # one call for them all (orchestrator/cluster/worker_sums.py)
                    refs = self.sums.send(chunk, state_ref, cohort)
                else:
                    refs = [member.call("train", state_ref, instructions, cohort) for member, instructions, _ in chunk]
                for ref, (member, instructions, task) in zip(refs, chunk, strict=True):
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
        if self.costs is not None:  # calibrated, and waiting for room on the capacity
            return self.costs.seconds(member.spec, member.group, samples, nbytes, self.clock.now())
        return simulated_duration(member.spec.system, member.spec.speed, samples, nbytes)

    def driver_busy(self, step: str) -> None:
        """Under the simulated clock with a calibration, the driver's calibrated seconds for
        ``step`` (aggregation, evaluation) pass before it goes on; the wall clock spends them
        by itself."""
        costs = self.costs if self.clock.simulated else None
        if costs is not None:
            self.clock.sleep(costs.driver_seconds(step))

    priced: TaskCosts | None = None
    """Set by a caller whose tasks are priced at another allocation than its processes
    hold (``fedray tune``'s simulated trials); else :attr:`costs` reads the config."""

    @cached_property
    def costs(self) -> TaskCosts | None:
        """The run's calibration and capacity (config ``calibration``/``capacity``), once
        pre-flight has settled the config; None without them."""
        return self.priced or TaskCosts.for_config(self.config)

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
        update: Update | None = None
        try:
            update = ray.get(ref)
            if isinstance(update, Exception):  # a task of a worker's round call (worker_sums.py)
                raise update
        except SimulatedDropout as exc:
            self.history.record("dropout", **where, detail=error_message(exc))
        except Unavailable as exc:
            member.retry_at = exc.retry_at
            self.history.record("unavailable", **where, detail=error_message(exc))
        except TransformMissing as exc:  # Ray restarted its actor from its first spec: send it again
            self.send_transform(member)
            self.history.record("unavailable", **where, detail=error_message(exc) + "; the driver sent it again")
        except PrivacyBudgetSpent as exc:  # the silo's choice, not a failure: it leaves for good
            member.lost = True
            self.history.record("participant_lost", **where, detail=error_message(exc))
        except ray.exceptions.RayError as exc:  # actor/task errors, and Ray's OOM kills too
            self.failed(member, where, exc)
        except Exception as exc:
            if exc is not update:  # the driver's own, not a task's
                raise
            self.failed(member, where, exc)
        else:
            member.failures, member.restarting = 0, False
            if not update.summed:
                self.sums.forget(task.task_id)
            return Arrival(task, member, update)
        self.sums.forget(task.task_id)
        return Arrival(task, member, None)

    def failed(self, member: Member, where: dict, exc: Exception, event: str = "failure") -> None:
        """Count a failure; give up on the participant after ``max_failures`` in a row, or
        at once when its actor died and may not restart."""
        self.privacy.forget(member.name)  # ask again: a restarted actor may have a new masking key
        worker_restarted(list(self.members.values()), member, exc)
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
