"""The Participant: one silo's private data and model, living inside one Ray actor.

The constructor loads the data *inside the actor* from the participant's own source;
nothing but the global state (one shared object-store vector) and small instructions ever
arrive from the driver, and only updates (deltas, gradients or soft labels) leave.

The class is plain Python so it can be unit-tested without Ray; the orchestrator wraps it
with ``ray.remote(Participant).options(num_cpus=..., num_gpus=..., ...)``.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actors.data.load import LocalData, load_participant_data
from actors.data.site_table import SiteTable
from actors.data.tables import TransformMissing
from actors.participant import private_state
from actors.participant.attacks import apply_attack
from actors.participant.description import describe_participant
from actors.participant.gpu_memory import apply_cap, describe_oom, memory_cap_fraction
from actors.participant.secure_aggregation import SEALED_METRIC, MaskingKey, SealedUpdates
from actors.participant.system import SimulatedDropout, check_online, initial_phase, play_out
from actors.spec.data import FittedTransform
from actors.spec.participant import ParticipantSpec
from actors.spec.training import TRAINED_TOGETHER
from actors.training.local_model import TorchLocalModel, known_layout
from strategies import Strategy, build_strategy
from strategies.client import Work
from strategies.secure_aggregation import encode
from strategies.types import GlobalState, Instructions, Layout, Update

"""How long a task injected with ``system.hang_prob`` hangs (the driver kills it sooner)."""


def pick_device() -> torch.device:
    """The GPU Ray assigned, else the CPU: never a GPU torch can merely see. Recent Ray
    versions leave CUDA_VISIBLE_DEVICES alone for an actor that asked for no GPU, so an
    empty assignment, not CUDA's visibility, is what says "train on the CPU"."""
    import ray

    if ray.is_initialized() and not ray.get_gpu_ids():
        return torch.device("cpu")
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def seed_process(seed: int, device: torch.device) -> None:
    """Seed torch, ``random`` and numpy as a participant sets up. On the CPU, torch's CPU
    generator only: ``torch.manual_seed`` also queues a CUDA seeding, a millisecond for
    each of the hundreds of participants a pool worker may set up."""
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


class GPUMemoryExceeded(RuntimeError):
    """The participant's training needed more GPU memory than its cap allows."""


def cap_gpu_memory(spec: ParticipantSpec, device: torch.device) -> float | None:
    """Cap this process's CUDA allocator at the participant's share of its card (its
    ``num_gpus``, or ``gpu_memory_gb``): Ray's fractional GPUs only schedule, so without
    this one participant can take a whole card from its neighbours. Returns the cap in GB."""
    if device.type != "cuda" or spec.num_gpus <= 0:
        return None
    device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
    total_gb = torch.cuda.get_device_properties(device).total_memory / 2**30
    fraction = memory_cap_fraction(spec.num_gpus, spec.gpu_memory_gb, total_gb)
    apply_cap(fraction, device)
    return fraction * total_gb


class Participant:
    """One federated participant: its data, its model, and the strategy's client half.

    >>> # on Ray: handle = ray.remote(Participant).options(num_cpus=1).remote(spec)
    >>> # update = ray.get(handle.train.remote(state_ref, instructions))
    """

    def __init__(self, spec: ParticipantSpec) -> None:
        self.spec = spec
        # secure aggregation: the key pair lives in its state directory when it has one, so
        # a pooled participant keeps it whichever worker serves it (else: one per process)
        self.secagg_key = MaskingKey.kept_in(private_state.key_path(spec.state_dir))
        self.sealed = SealedUpdates()
        self._set_up = False
        self._local: TorchLocalModel | None = None
        self._raw: SiteTable | None = None  # its raw table, for preprocessing
        self.idle: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        """Around the simulator's sleeps: a pool worker training several participants at
        once lets the others run meanwhile (actors/participant/cohort.py)."""
        self.pause: Callable[[float], None] = time.sleep
        """The simulator's sleep: a pool worker's ends early when the driver abandons the task."""

    def _load_data(self) -> LocalData:
        """Set-up's steps before the model: checks, torch's threads, the device, seeding
        (the model's initial weights are drawn right after), the data."""
        spec = self.spec
        if spec.preprocess is not None and spec.transform is None:
            raise TransformMissing(f"participant {spec.name}: the run preprocesses its table, and the fitted "
                                   "transform has not reached this participant")
        torch.set_num_threads(max(1, spec.num_threads))
        self.device = pick_device()
        seed_process(spec.seed, self.device)
        return load_participant_data(spec)

    def _checked_strategy(self) -> Strategy:
        strategy = build_strategy(self.spec.strategy, self.spec.strategy_options)
        if self.spec.train.dp_sgd is not None and not strategy.supports_dp_sgd:
            raise ValueError(  # the silo enforces its own privacy, whatever the driver asks for
                f"participant {self.spec.name}: train.dp_sgd protects plain local training of the "
                f"weights; strategy {self.spec.strategy!r} does other local work")
        return strategy

    def _ensure_set_up(self, data: LocalData | None = None) -> None:
        """Load data (unless given, just loaded by :meth:`_load_data`), build the model and
        restore private state, once per process.

        This runs in the first call rather than in ``__init__``, so that a bad data path
        reaches the driver as the participant's own typed error (a ``DataError`` it can
        tell from a crash), and a restarted actor sets itself up again the same way.
        """
        if self._set_up:
            return
        spec = self.spec
        self.data: LocalData = data if data is not None else self._load_data()
        self.gpu_cap_gb = cap_gpu_memory(spec, self.device)
        with self._within_cap():  # moving the data to the card can run out of memory too
            self._local = TorchLocalModel(spec, self.data, self.device)
        self.strategy = self._checked_strategy()
        self.client = self.strategy.client()
        self._rng = np.random.default_rng(spec.seed + 7919)
        self._phase = initial_phase(spec.system.availability, self._rng)  # periodic or trace windows
        # A restarted actor picks up its private state from its own node: the simulator's
        # random state, the client half's state, the privacy budget it has spent.
        self._adopt_private(private_state.load(spec.state_dir))
        with self._within_cap():
            self._local.warm_up()
        self._initial = self._local.get()
        self._raw = None  # the preprocessing rounds are over once it sets up
        arrays = (self.data.x_train, self.data.y_train, self.data.x_test, self.data.y_test)
        self._footprint = sum(a.nbytes for a in arrays) + 3 * self._initial.nbytes
        self._set_up = True

    def _adopt_private(self, state: private_state.PrivateState) -> None:
        """Go on from ``state``: the simulator's random state, the client half's state and
        the DP-SGD budget spent (a fresh state: the seeded ones set up just before)."""
        self.private = state
        if state.rng_state is not None:
            self._rng.bit_generator.state = state.rng_state
        else:  # fresh: the random state as seeded, which a restarted process seeds again alike,
            state.rng_state = self._rng.bit_generator.state  # so nothing is written until it moves
        # (getattr: a state file written before a field existed lacks it)
        self.client.load_state_dict(getattr(state, "client_state", {}))
        if self._local.dp_accountant is not None:
            self._local.dp_accountant.history = list(getattr(state, "dp_sgd_history", []))

    @contextlib.contextmanager
    def _within_cap(self) -> Iterator[None]:
        """Past its GPU memory cap the participant fails alone, saying who, the cap and
        the request; torch's own message names neither."""
        try:
            yield
        except torch.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            raise GPUMemoryExceeded(describe_oom(f"participant {self.spec.name}",
                                                 getattr(self, "gpu_cap_gb", None) or 0.0, exc)) from None

    @property
    def local(self) -> TorchLocalModel:
        """Its model and data, set up on first use."""
        self._ensure_set_up()
        return self._local

    @property
    def layout(self) -> Layout:
        """The layout of this participant's whole model."""
        return self.local.layout

    # -- introspection -------------------------------------------------------------
    def adopt(self, transform: FittedTransform) -> None:
        """Take the run's fitted preprocessing into the spec, before setting up: the one way
        it reaches a participant that started without it (the driver fits it from every
        site's statistics after the participants start; it sends it once then, and once
        more to an actor Ray restarted from its first spec, see :class:`TransformMissing`)."""
        if self.spec.transform is None and not self._set_up:
            self.spec = self.spec.model_copy(update={"transform": transform})

    def describe(self, lightly: bool = False) -> dict[str, Any]:
        """Facts the driver records once: sizes, shapes, where the actor runs.

        ``lightly``: when this process has built a model of the same architecture on the
        CPU, describe from the data alone and set up at the first task. A pool worker
        serving more participants than it keeps set up asks for this: it would otherwise
        build each one's model only to read its layout, then evict it (0.6 ms each, most of
        a thousand-participant start)."""
        data, layout, private = (None, None, None) if self._set_up or not lightly else self._described_lightly()
        if layout is None:
            self._ensure_set_up(data)
            data, layout, private = self.data, self.layout, self.private
        return describe_participant(self.spec, data, layout, self.device, private)

    def _described_lightly(self) -> tuple[LocalData, Layout | None, private_state.PrivateState | None]:
        """The data, and, when this process knows the layout of its model on the CPU, that
        layout and the private state: all :meth:`describe` reports, with no model built."""
        data = self._load_data()
        layout = known_layout(self.spec, data) if self.device.type == "cpu" else None
        if layout is None:
            return data, None, None
        self._checked_strategy()  # the same refusal as at set-up
        return data, layout, private_state.load(self.spec.state_dir)

    def footprint_bytes(self) -> int:
        """What this participant holds once set up: its data, and its model's parameters
        about three times over (weights, gradients, optimizer state); 0 before set-up."""
        return self._footprint if self._set_up else 0

    def initial_parameters(self) -> np.ndarray:
        """The weights the model was built with (the driver starts the global state from
        these), whatever the participant has trained since."""
        self._ensure_set_up()
        return self._initial.copy()

    # -- work ----------------------------------------------------------------------
    def train(self, state: GlobalState, instructions: Instructions) -> Update:
        """Run the strategy's client half on the global state; return its update."""
        self._ensure_set_up()
        started = time.perf_counter()
        if instructions.simulated_at is not None:
            run_clock = instructions.simulated_at
        else:
            run_clock = time.time() - instructions.run_start if instructions.run_start else 0.0
        self._check_online(run_clock)
        expected = instructions.expect_state
        if expected is not None and self.private.last_task_id < expected:
            raise private_state.PrivateStateError(
                f"participant {self.spec.name}: the driver expects its private state as of task {expected}, "
                f"but {self._state_path()} holds "
                + (f"task {self.private.last_task_id}" if self.private.restored else "none")
                + " (a cleared temp directory, or a restart on another node?); starting afresh would "
                "reset its client state and DP-SGD budget")
        train = self.spec.train
        work = Work(instructions.seed, train.local_epochs, instructions.local_steps or train.local_steps)
        self.local.trained_together = None
        with self._within_cap():
            result = self.client.work(self.local, state, work)
        payload = apply_attack(result.payload, self.spec.system.attack, instructions.seed)  # honest unless configured
        payload = payload.astype(np.float32, copy=False)
        metrics = dict(result.metrics)
        if self.local.trained_together is not None:  # it trained (FedSGD only takes a gradient)
            metrics[TRAINED_TOGETHER] = float(self.local.trained_together)
        real = time.perf_counter() - started
        try:
            simulated = self._simulate(real, int(metrics["samples"]), run_clock, state.params.nbytes,
                                       instructions.simulated_seconds)
        except SimulatedDropout:  # the work ran: its client state and the simulator's draws stand
            self._remember(instructions)
            raise
        if self._remember(instructions):
            metrics[private_state.SAVED_METRIC] = 1.0
        if instructions.seal:  # kept here until its cohort is masked
            metrics[SEALED_METRIC] = float(self.sealed.hold(instructions.task_id, payload, self.local.num_examples))
            payload = np.zeros(0, np.float32)
        return Update(
            participant=self.spec.name,
            base_version=state.version,
            kind=self.strategy.payload,
            payload=payload,
            layout=result.layout,
            num_examples=self.local.num_examples,
            task_id=instructions.task_id,
            metrics=metrics,
            train_seconds=real,
            simulated_seconds=simulated,
            extras=result.extras,
        )

    # -- private state and secure aggregation --------------------------------
    def _remember(self, instructions: Instructions) -> bool:
        """Save what this participant must not lose if its actor is restarted, keeping the
        earlier versions a resume may roll back to; True when it wrote."""
        previous = self.private.version()
        self.private.tasks_done += 1
        self.private.last_task_id = instructions.task_id
        if self.spec.state_dir is None:  # nowhere to keep it: skip copying the client state
            return False
        rng_state, client_state = self._rng.bit_generator.state, self.client.state_dict()
        dp_history = list(self.local.dp_accountant.history) if self.local.dp_accountant is not None else []
        saved = (self.private.rng_state, getattr(self.private, "dp_sgd_history", []))  # (an old file may lack it)
        if (rng_state, dp_history) == saved and not (client_state or self.private.client_state):
            # Nothing a restart needs has changed since set-up or the last write (FedAvg
            # without a simulator never writes): the counters go with the next change. A
            # write per task cost a pool worker more than training its 64 small participants
            # together, and a first write each cost a 1,000-participant run's workers ~0.1 s
            # plus as much to delete the files at its end.
            return False
        if previous.last_task_id >= 0:  # (a fresh state is what a rollback past every version gives)
            self.private.earlier = [*getattr(self.private, "earlier", []), previous]
        self.private.rng_state, self.private.client_state = rng_state, client_state
        self.private.dp_sgd_history = dp_history  # the budget spent must survive a restart
        private_state.prune(self.private, instructions.rollback_before)
        private_state.save(self.spec.state_dir, self.private)
        return True

    def _state_path(self) -> Path | None:
        return private_state.state_path(self.spec.state_dir)

    def restore_private_state(self, rollback: private_state.Rollback) -> None:
        """Resume: put the private state back to the version the run's checkpoint names
        (this participant may have saved newer ones after it, before the run was killed);
        refuses, naming itself and the file, when the driver expects a version it lacks."""
        self._ensure_set_up()
        if self.spec.state_dir is None:
            return
        saved = private_state.load(self.spec.state_dir)
        state = private_state.rolled_back(saved if saved.restored else None, rollback, self.spec.name,
                                          self._state_path())
        self._adopt_private(state)
        private_state.save(self.spec.state_dir, state)

    def discard_private_state(self) -> None:
        """The run is over and cannot be resumed: delete what this participant kept."""
        private_state.discard(self.spec.state_dir)

    def public_key(self) -> bytes:
        """The public half, relayed by the driver to the other members of a cohort."""
        return self.secagg_key.public_bytes

    def masked_update(
        self, cohort_id: int, peers: dict[str, bytes], weights: dict[int, float], clip_norm: float | None
    ) -> np.ndarray:
        """Secure aggregation, phase 2: the sealed tasks ``weights`` names, masked for the cohort."""
        return self.sealed.mask(self.spec.name, self.secagg_key, cohort_id, peers, weights, clip_norm)

    def unmask_dropped(self, cohort_id: int, dropped: list[str], peers: dict[str, bytes], size: int) -> np.ndarray:
        """Mask recovery: this survivor's pairwise masks with peers that dropped out."""
        return self.secagg_key.masks_with(self.spec.name, dropped, peers, cohort_id, size)

    # -- federated preprocessing: statistics of the raw table, before set-up ---------
    def table_schema(self) -> dict[str, Any]:
        """Round 0, in the clear: numeric columns and categorical values (the schema)."""
        return self._site_table().schema()

    def table_statistics(self, numeric: list[str], scales: list[float] | None = None,
                         means: list[float] | None = None) -> np.ndarray:
        """Rounds 1-3 of the fit (:meth:`actors.data.site_table.SiteTable.statistics`)."""
        return self._site_table().statistics(numeric, scales, means)

    def _site_table(self) -> SiteTable:
        """Read once for the preprocessing rounds, not once a round."""
        if self._raw is None:
            self._raw = SiteTable(self.spec)
        return self._raw

    def masked_table_statistics(self, numeric: list[str], scales: list[float] | None,
                                means: list[float] | None, cohort_id: int, peers: dict[str, bytes]) -> np.ndarray:
        """The same statistics, masked for secure aggregation: the driver sees only the sum."""
        return self.secagg_key.mask(self.spec.name, encode(self.table_statistics(numeric, scales, means)),
                                    peers, cohort_id)

    # -- the simulator ---------------------------------------------------------------
    def _check_online(self, run_clock: float) -> None:
        check_online(self.spec, self._phase, run_clock)

    def _simulate(self, real: float, samples: int, run_clock: float, nbytes: int,
                  simulated: float | None) -> float:
        return play_out(self.spec, self._phase, self._rng, real, samples, run_clock, nbytes, simulated, self._wait)

    def _wait(self, seconds: float) -> None:
        """A simulated wait: other tasks of a pool worker compute meanwhile."""
        with self.idle():
            self.pause(seconds)
