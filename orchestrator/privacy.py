"""The driver's side of privacy: secure-aggregation cohorts and DP-FedAvg, around a batch.

Both turn a batch of updates into ONE aggregate update before the strategy sees it:
- secure aggregation: the driver sums masked ring vectors it cannot read, asks survivors
  for the masks of cohort members that dropped out, and decodes only the sum
  ``(sum n_i d_i, sum n_i)``; the strategy receives the example-weighted mean;
- DP-FedAvg: each update is clipped to ``clip_norm`` (by the participant, under secure
  aggregation) and Gaussian noise calibrated by ``noise_multiplier`` is added to the sum.
So they suit strategies that aggregate by (weighted) mean, like FedAvg; a robust
strategy (median, Krum) needs the individual updates these features hide. Under secure
aggregation the schedule's per-update staleness weight cannot be applied (the driver
never sees one update); a cohort is a sync round, so its updates are fresh anyway.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray

from actors.secure_aggregation import SECAGG_OPTION
from orchestrator.config import Privacy, RunConfig
from strategies.privacy import DPParams, PrivacyAccountant, noisy_mean
from strategies.secure_aggregation import unmask_sum
from strategies.types import Layout, Update

KEY_TIMEOUT_S = 60.0
"""How long the driver waits for cohort members' public keys or recovered masks."""


class SecureAggregationAbort(RuntimeError):
    """The cohort's sum cannot be decoded (a survivor failed during mask recovery)."""


class PrivacyHooks:
    """Everything privacy-related the run loop calls; all no-ops when privacy is off."""

    def __init__(self, config: Privacy, run: RunConfig) -> None:
        self.config = config
        self.secure = config.secure_aggregation
        self.dp = (DPParams(config.dp.clip_norm, config.dp.noise_multiplier, config.dp.delta)
                   if config.dp is not None else None)
        self.num_participants = run.num_participants
        self.rng = np.random.default_rng(np.random.SeedSequence([run.seed, 7]))
        self.accountant = (PrivacyAccountant(self.dp.noise_multiplier, self.dp.delta)
                           if self.dp is not None else None)
        self.public_keys: dict[str, bytes] = {}
        self.cohort_ids = itertools.count(1)
        self.cohort: dict[str, Any] | None = None
        self.task_cohort: dict[int, int] = {}

    @property
    def active(self) -> bool:
        return self.secure or self.dp is not None

    # -- secure aggregation: cohorts ----------------------------------------------------
    def open_cohort(self, members: Sequence[Any]) -> list[Any]:
        """Fix the cohort of a round and relay its public keys; returns who can join."""
        if not self.secure or not members:
            return list(members)
        missing = {m.handle.public_key.remote(): m for m in members if m.name not in self.public_keys}
        if missing:
            ready, _ = ray.wait(list(missing), num_returns=len(missing), timeout=KEY_TIMEOUT_S)
            for ref in ready:
                with contextlib.suppress(ray.exceptions.RayError):  # it sits the round out
                    self.public_keys[missing[ref].name] = ray.get(ref)
        joined = [m for m in members if m.name in self.public_keys]
        self.cohort = {"cohort_id": next(self.cohort_ids),
                       "peers": {m.name: self.public_keys[m.name] for m in joined},
                       "handles": {m.name: m.handle for m in joined}}
        return joined

    def forget(self, name: str) -> None:
        """A failed actor may come back with a new key: fetch it again next round."""
        self.public_keys.pop(name, None)

    def task_options(self, task_id: int) -> dict[str, Any]:
        if not self.secure or self.cohort is None:
            return {}
        self.task_cohort[task_id] = self.cohort["cohort_id"]
        options: dict[str, Any] = {"cohort_id": self.cohort["cohort_id"], "peers": self.cohort["peers"]}
        if self.dp is not None:
            options["clip_norm"] = self.dp.clip_norm  # the driver cannot clip a masked update
        return {SECAGG_OPTION: options}

    def check(self, update: Update, layout: Layout) -> str | None:
        """Hygiene for masked updates (the plaintext checks ran on the participant)."""
        payload = update.payload
        if not isinstance(payload, np.ndarray) or payload.dtype != np.uint64:
            return "secure aggregation expects a masked uint64 vector"
        if payload.shape != (layout.size + 1,):
            return f"masked vector has {payload.size} values, expected {layout.size + 1}"
        if self.cohort is None or self.task_cohort.get(update.task_id) != self.cohort["cohort_id"]:
            return "masked update from an earlier cohort: its masks cannot cancel"
        return None

    # -- aggregation ----------------------------------------------------------------------
    def combine(self, batch: list[Update], layout: Layout) -> list[Update]:
        """The batch the strategy sees: unchanged, or one private aggregate update."""
        if not self.active or not batch:
            return batch
        if self.secure:
            # the sum of [n_i d_i, n_i]; under DP participants send [clip(d_i), 1] instead
            total, count = self._unmask(batch, layout.size)
            if self.dp is not None:
                total = total + self.rng.normal(0.0, self.dp.noise_multiplier * self.dp.clip_norm, total.size)
            payload = total / max(count, 1e-12)
            total_examples = float(sum(u.num_examples for u in batch))
        else:
            payload = noisy_mean([u.payload for u in batch], self.dp, self.rng) if self.dp else None
            total_examples = float(sum(u.num_examples for u in batch))
        if self.accountant is not None:
            self.accountant.step(sample_rate=len(batch) / self.num_participants)
        first = batch[0]
        return [Update(
            participant=f"<{len(batch)} combined>", base_version=min(u.base_version for u in batch),
            kind=first.kind, payload=np.asarray(payload, dtype=np.float32), layout=layout,
            num_examples=int(round(total_examples)), task_id=first.task_id,
            staleness=max(u.staleness for u in batch), weight=1.0,
        )]

    def _unmask(self, batch: list[Update], size: int) -> tuple[np.ndarray, float]:
        assert self.cohort is not None
        arrived = {u.participant for u in batch}
        dropped = sorted(set(self.cohort["peers"]) - arrived)
        recovered = []
        if dropped:
            refs = [self.cohort["handles"][name].unmask_dropped.remote(
                self.cohort["cohort_id"], dropped, self.cohort["peers"], size + 1) for name in sorted(arrived)]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=KEY_TIMEOUT_S)
            if len(ready) < len(refs):
                raise SecureAggregationAbort(f"survivors did not return masks for {dropped} in time")
            try:
                recovered = ray.get(refs)
            except ray.exceptions.RayError as exc:
                raise SecureAggregationAbort(f"mask recovery for {dropped} failed: {exc}") from None
        total = unmask_sum([u.payload for u in batch], recovered)
        return total[:size], float(total[size])

    # -- reporting and checkpoints ----------------------------------------------------------
    def epsilon(self) -> float | None:
        return self.accountant.epsilon() if self.accountant is not None else None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"secure_aggregation": self.secure}
        if self.accountant is not None:
            out |= {"dp_epsilon": self.epsilon(), "dp_delta": self.dp.delta,
                    "dp_noise_multiplier": self.dp.noise_multiplier, "dp_clip_norm": self.dp.clip_norm}
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state,
                "accountant": list(self.accountant.history) if self.accountant else []}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]
        if self.accountant is not None:
            self.accountant.history = list(state.get("accountant", []))
