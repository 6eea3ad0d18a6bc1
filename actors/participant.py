"""The Participant: one silo's private data and model, living inside one Ray actor.

The constructor loads the data *inside the actor* from the participant's own source;
nothing but the global state (one shared object-store vector) and small instructions ever
arrive from the driver, and only updates (deltas, gradients or soft labels) leave.

The class is plain Python so it can be unit-tested without Ray; the orchestrator wraps it
with ``ray.remote(Participant).options(num_cpus=..., num_gpus=..., ...)``.
"""

from __future__ import annotations

import os
import random
import socket
import time
from typing import Any

import numpy as np
import torch

from actors.data import LocalData, load_participant_data
from actors.models import build_model
from actors.params import get_flat, layout_of, set_flat
from actors.spec import ParticipantSpec
from actors.system import SimulatedDropout, Unavailable, online_until, sleep_until, task_duration
from actors.training import evaluate, local_gradient, to_tensors, train_locally
from strategies.types import GlobalState, Instructions, Update


def pick_device() -> torch.device:
    """The GPU Ray assigned (Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class Participant:
    """One federated participant.

    >>> # on Ray: handle = ray.remote(Participant).options(num_cpus=1).remote(spec)
    >>> # update = ray.get(handle.train.remote(state_ref, instructions))
    """

    def __init__(self, spec: ParticipantSpec) -> None:
        self.spec = spec
        torch.set_num_threads(max(1, spec.num_threads))
        torch.manual_seed(spec.seed)
        random.seed(spec.seed)
        np.random.seed(spec.seed % 2**32)
        self.device = pick_device()
        self.data: LocalData = load_participant_data(spec)
        self.model = build_model(
            spec.model.name, spec.model.options, self.data.input_shape, self.data.num_classes
        ).to(self.device)
        self.layout = layout_of(self.model)
        self.x, self.y = to_tensors(self.data.x_train, self.data.y_train, self.device)
        self.x_test, self.y_test = to_tensors(self.data.x_test, self.data.y_test, self.device)
        self._rng = np.random.default_rng(spec.seed + 7919)
        availability = spec.system.availability
        self._phase = 0.0
        if availability is not None:
            period = availability.on_s + availability.off_s
            self._phase = availability.phase_s if availability.phase_s is not None else float(
                self._rng.uniform(0, period)
            )

    # -- introspection -------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Facts the driver records once: sizes, shapes, where the actor runs."""
        info: dict[str, Any] = {
            "name": self.spec.name,
            "group": self.spec.group,
            "num_examples": len(self.y),
            "num_test_examples": len(self.y_test),
            "input_shape": self.data.input_shape,
            "num_classes": self.data.num_classes,
            "num_parameters": self.layout.size,
            "layout": self.layout,
            "source": self.data.source,
            "device": str(self.device),
            "torch_threads": torch.get_num_threads(),
            "speed": self.spec.speed,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        try:
            import ray

            if ray.is_initialized():
                ctx = ray.get_runtime_context()
                info["node_id"] = ctx.get_node_id()
                info["assigned_resources"] = ctx.get_assigned_resources()
                info["gpu_ids"] = ray.get_gpu_ids()
        except ImportError:  # pragma: no cover - Ray is a dependency
            pass
        return info

    def initial_parameters(self) -> np.ndarray:
        return get_flat(self.model, self.layout)

    # -- work ----------------------------------------------------------------------
    def train(self, state: GlobalState, instructions: Instructions) -> Update:
        """Start from the global state, work locally, return the payload asked for."""
        started = time.perf_counter()
        run_clock = time.time() - instructions.options.get("run_start", time.time())
        self._check_online(run_clock)
        set_flat(self.model, state.params, state.layout)
        train = self.spec.train
        seed = instructions.seed
        if instructions.payload == "gradient":
            loss = local_gradient(self.model, self.x, self.y, train.batch_size, seed)
            params = dict(self.model.named_parameters())
            grads = [params[n].grad for n in state.layout.names]
            payload = torch.cat([g.reshape(-1).float().cpu() for g in grads]).numpy()
            metrics = {"train_loss": loss, "samples": float(min(train.batch_size, len(self.y)))}
        else:
            metrics = train_locally(
                self.model, self.x, self.y, train, seed,
                epochs=instructions.local_epochs or train.local_epochs,
                steps=instructions.local_steps or train.local_steps,
                proximal_mu=instructions.proximal_mu,
            )
            payload = get_flat(self.model, state.layout) - np.asarray(state.params, np.float32)
        real = time.perf_counter() - started
        simulated = self._simulate(real, int(metrics["samples"]), run_clock)
        return Update(
            participant=self.spec.name,
            base_version=state.version,
            kind=instructions.payload,
            payload=payload.astype(np.float32, copy=False),
            layout=state.layout,
            num_examples=len(self.y),
            task_id=instructions.task_id,
            metrics=metrics,
            train_seconds=real,
            simulated_seconds=simulated,
        )

    def evaluate(self, state: GlobalState | None = None) -> dict[str, float]:
        """Accuracy of the global model (or the current local one) on local test data."""
        if state is not None:
            set_flat(self.model, state.params, state.layout)
        return evaluate(self.model, self.x_test, self.y_test)

    # -- the simulator ---------------------------------------------------------------
    def _check_online(self, run_clock: float) -> None:
        availability = self.spec.system.availability
        if availability is None:
            return
        online, change_at = online_until(availability, self._phase, run_clock)
        if not online:
            raise Unavailable(self.spec.name, change_at)

    def _simulate(self, real: float, samples: int, run_clock: float) -> float:
        """Stretch the task to its simulated duration; maybe drop it. Returns seconds."""
        system = self.spec.system
        duration = task_duration(real, samples, self.spec.speed, system.simulated_seconds_per_sample)
        if system.availability is not None:
            _, offline_at = online_until(system.availability, self._phase, run_clock)
            if run_clock + duration > offline_at:
                sleep_until(time.perf_counter() + (offline_at - run_clock) - real)
                raise SimulatedDropout(f"participant {self.spec.name} went offline mid-task")
        dropped = system.dropout_prob > 0 and self._rng.random() < system.dropout_prob
        sleep_until(time.perf_counter() + duration - real)
        if dropped:
            raise SimulatedDropout(f"participant {self.spec.name} dropped the task")
        return duration
