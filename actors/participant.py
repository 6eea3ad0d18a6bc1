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

from actors import private_state
from actors.attacks import apply_attack
from actors.data import LocalData, load_participant_data
from actors.distillation import consensus_term, distill, load_public_set, predict_logits
from actors.local_dp import check_budget, check_supported, train_dp_sgd
from actors.models import build_model
from actors.params import get_flat, layout_of, set_flat
from actors.personalised import load_shared, shared_delta, test_split, train_fedrep
from actors.secure_aggregation import SEALED_METRIC, SECAGG_OPTION, MaskingKey, SealedUpdates
from actors.spec import ParticipantSpec
from actors.system import SimulatedDropout, Unavailable, online_until, sleep_until, task_duration
from actors.training import evaluate, local_gradient, to_tensors, train_locally
from strategies.privacy import PrivacyAccountant
from strategies.types import GlobalState, Instructions, Layout, Update

HANG_SECONDS = 3600.0
"""How long a task injected with ``system.hang_prob`` hangs (the driver kills it sooner)."""


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
        # A restarted actor picks up its private state from its own node.
        self.private = private_state.load(spec.state_dir)
        if self.private.rng_state is not None:
            self._rng.bit_generator.state = self.private.rng_state
        # local DP-SGD: refuse a model Opacus cannot handle now, not at the first task; a
        # restarted actor goes on counting its privacy budget from its saved history
        self.dp_accountant: PrivacyAccountant | None = None
        if (dp := spec.train.dp_sgd) is not None:
            check_supported(self.model, spec.name, spec.model.name)
            self.dp_accountant = PrivacyAccountant(
                dp.noise_multiplier, dp.delta, history=list(getattr(self.private, "dp_sgd_history", []))
            )
        # secure aggregation: a fresh key per actor (a restarted one gets a new one)
        self.secagg_key = MaskingKey.generate()
        self.sealed = SealedUpdates()
        self._warm_up()

    def _warm_up(self) -> None:
        """One throwaway training step, undone afterwards, so torch's lazy first-call set-up
        (seconds on a busy machine) happens at start-up instead of inside the first timed
        task, where it would swamp simulated speeds and time-to-accuracy."""
        if len(self.y) == 0:
            return
        saved = get_flat(self.model, self.layout)
        with torch.random.fork_rng(devices=[]):
            train_locally(self.model, self.x[:2], self.y[:2], self.spec.train, seed=0, epochs=1, steps=1)
            if (dp := self.spec.train.dp_sgd) is not None:  # Opacus' first step too; nothing leaves
                train_dp_sgd(self.model, self.x[:2], self.y[:2], self.spec.train,
                             PrivacyAccountant(dp.noise_multiplier, dp.delta), epochs=1, steps=1)
        set_flat(self.model, saved, self.layout)

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
            "tasks_done": self.private.tasks_done,
            "restored_state": self.private.restored,
        }
        try:
            import ray

            ctx = ray.get_runtime_context() if ray.is_initialized() else None
            if ctx is not None and ctx.get_actor_id() is not None:  # inside an actor, not a driver

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
        if self.dp_accountant is not None and (instructions.payload != "delta" or "sharing" in instructions.options):
            raise ValueError(  # the silo enforces its own privacy, whatever the driver asks for
                f"participant {self.spec.name}: train.dp_sgd protects only the 'delta' payload, "
                f"refusing to send {instructions.payload!r}"
                + (f" with sharing {instructions.options['sharing']!r}" if "sharing" in instructions.options else "")
            )
        if instructions.payload == "logits" or "sharing" in instructions.options:
            return self._train_heterogeneous(state, instructions, started, run_clock)
        set_flat(self.model, state.params, state.layout)
        train = self.spec.train
        seed = instructions.seed
        if instructions.payload == "gradient":
            loss = local_gradient(self.model, self.x, self.y, train.batch_size, seed)
            params = dict(self.model.named_parameters())
            grads = [params[n].grad for n in state.layout.names]
            payload = torch.cat([g.reshape(-1).float().cpu() for g in grads]).numpy()
            metrics = {"train_loss": loss, "samples": float(min(train.batch_size, len(self.y)))}
        elif self.dp_accountant is not None:  # clipped + noised here, before the delta leaves
            epochs = instructions.local_epochs or train.local_epochs
            steps = instructions.local_steps or train.local_steps
            check_budget(self.dp_accountant, train.dp_sgd, len(self.y), train, epochs, steps, self.spec.name)
            metrics = train_dp_sgd(self.model, self.x, self.y, train, self.dp_accountant, epochs=epochs,
                                   steps=steps, proximal_mu=instructions.proximal_mu)
            payload = get_flat(self.model, state.layout) - np.asarray(state.params, np.float32)
        else:
            metrics = train_locally(
                self.model, self.x, self.y, train, seed,
                epochs=instructions.local_epochs or train.local_epochs,
                steps=instructions.local_steps or train.local_steps,
                proximal_mu=instructions.proximal_mu,
            )
            payload = get_flat(self.model, state.layout) - np.asarray(state.params, np.float32)
        payload = apply_attack(payload, self.spec.system.attack, seed)  # honest unless configured
        real = time.perf_counter() - started
        simulated = self._simulate(real, int(metrics["samples"]), run_clock)
        self._remember(instructions.task_id, state)
        payload = payload.astype(np.float32, copy=False)
        if SECAGG_OPTION in instructions.options:  # kept here until its cohort is masked
            metrics[SEALED_METRIC] = float(self.sealed.hold(instructions.task_id, payload, len(self.y)))
            payload = np.zeros(0, np.float32)
        return Update(
            participant=self.spec.name,
            base_version=state.version,
            kind=instructions.payload,
            payload=payload,
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

    # -- heterogeneous architectures ------------------------------------------
    def _train_heterogeneous(
        self, state: GlobalState, instructions: Instructions, started: float, run_clock: float
    ) -> Update:
        """Soft labels (distill the consensus, train, predict the public set) or partial
        sharing (load the shared part, train, send only its delta). Personal parameters
        stay in ``self.model``; the update reports this model's own test accuracy."""
        train, opts, seed = self.spec.train, instructions.options, instructions.seed
        epochs = instructions.local_epochs or train.local_epochs
        steps = instructions.local_steps or train.local_steps
        metrics: dict[str, float] = {}
        tested: dict[str, float] | None = None  # set early when the global model is what it holds
        if instructions.payload == "logits":
            public, keep = self._public_set(), None
            if state.version > 0:  # version 0 has no consensus yet, only zeros
                teacher = torch.tensor(np.asarray(state.params).reshape(len(public), -1), device=self.device)
                metrics["distill_loss"] = distill(
                    self.model, public, teacher, train, opts["temperature"], opts["distill_epochs"], seed
                )
                if opts.get("revisit_kd_weight", 0.0) > 0:
                    keep = consensus_term(public, teacher, opts["temperature"], opts["revisit_kd_weight"], seed)
            metrics |= train_locally(self.model, self.x, self.y, train, seed, epochs=epochs, steps=steps,
                                     extra_loss=keep)
            logits = predict_logits(self.model, public)
            payload = logits.reshape(-1).float().cpu().numpy()
            layout = Layout(("logits",), (tuple(logits.shape),))
        else:
            layout, start = load_shared(self.model, self.layout, opts["sharing"], state)
            if opts["sharing"] == "all":  # no personal part: the model it holds is the global one
                tested = evaluate(self.model, *self._test_tensors())
            if "head_epochs" in opts:
                metrics |= train_fedrep(self.model, self.x, self.y, train, seed, opts["head_epochs"], epochs, steps)
            else:
                metrics |= train_locally(self.model, self.x, self.y, train, seed, epochs=epochs, steps=steps)
            payload = shared_delta(self.model, layout, start)
        tested = tested or evaluate(self.model, *self._test_tensors())
        metrics |= {f"test_{k}": v for k, v in tested.items()}
        real = time.perf_counter() - started
        simulated = self._simulate(real, int(metrics["samples"]), run_clock)
        return Update(
            participant=self.spec.name, base_version=state.version, kind=instructions.payload,
            payload=payload.astype(np.float32, copy=False), layout=layout, num_examples=len(self.y),
            task_id=instructions.task_id, metrics=metrics, train_seconds=real, simulated_seconds=simulated,
        )

    def _public_set(self) -> torch.Tensor:
        if getattr(self, "_public", None) is None:
            if self.spec.dataset is None:
                raise ValueError(f"participant {self.spec.name}: soft labels need a run-level dataset with public_size")
            self._public = torch.as_tensor(load_public_set(self.spec.dataset, self.spec.data.view), device=self.device)
        return self._public

    def _test_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if getattr(self, "_test", None) is None:
            self._test = to_tensors(*test_split(self.spec, self.data), self.device)
        return self._test

    # -- private state and secure aggregation --------------------------------
    def _remember(self, task_id: int, state: GlobalState) -> None:
        """Save what this participant must not lose if its actor is restarted."""
        self.private.tasks_done += 1
        self.private.last_task_id = task_id
        self.private.rng_state = self._rng.bit_generator.state
        self.private.personal_params = get_flat(self.model, state.layout)
        if self.dp_accountant is not None:  # the budget spent must survive a restart
            self.private.dp_sgd_history = list(self.dp_accountant.history)
        private_state.save(self.spec.state_dir, self.private)

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
        if system.hang_prob > 0 and self._rng.random() < system.hang_prob:
            time.sleep(HANG_SECONDS)  # fault injection: only the driver's task_timeout_s ends this
        dropped = system.dropout_prob > 0 and self._rng.random() < system.dropout_prob
        sleep_until(time.perf_counter() + duration - real)
        if dropped:
            raise SimulatedDropout(f"participant {self.spec.name} dropped the task")
        return duration
