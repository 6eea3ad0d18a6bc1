"""The driver's side of privacy: secure-aggregation cohorts and DP-FedAvg, around a batch.

Both turn a batch of updates into ONE aggregate update before the strategy sees it:
- secure aggregation: the batch's participants form a cohort; the driver relays their
  public keys, collects one masked ring vector per member (each holding its sealed
  updates scaled by their staleness weights, see ``actors/participant/secure_aggregation.py``), asks
  survivors for the masks of members that dropped out meanwhile, and decodes only the
  sum ``(sum w n d, sum n)``; the strategy receives the example-weighted mean, exactly
  what FedAvg would have computed from the plain updates;
- DP-FedAvg: each update is clipped to ``clip_norm`` (by the participant, under secure
  aggregation) and Gaussian noise calibrated by ``noise_multiplier`` is added to the sum.
So they suit strategies that aggregate by (weighted) mean; the config refuses the robust
ones (median, Krum), which need the individual updates these features hide.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray

from actors.participant.secure_aggregation import MAX_SEALED, SEALED_METRIC, SECAGG_GROUP
from orchestrator.config import Privacy, RunConfig
from orchestrator.records.history import History
from strategies.privacy import DPParams, PrivacyAccountant, gaussian_noise, noisy_mean
from strategies.secure_aggregation import unmask_sum
from strategies.types import Layout, Update

KEY_TIMEOUT_S = 60.0
"""How long the driver waits for cohort members' public keys, masked updates or recovered
masks; these calls are quick and run beside training, so only a dead or wedged member waits
this long."""


class SecureAggregationAbort(RuntimeError):
    """The cohort's sum cannot be decoded safely: too few members answered, or a survivor
    failed during mask recovery. The aggregation is skipped and recorded."""


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
        # Cohort ids salt the pairwise masks, so they must never repeat for a pair of keys,
        # and participants keep their keys across a resume: a run that resumes from a
        # checkpoint repeats the cohort count, so each driver start draws its own high bits.
        # (Masks cancel in the sum: the aggregate does not depend on them.)
        self.cohort_ids = itertools.count((secrets.randbits(30) + 1) << 32)

    @property
    def active(self) -> bool:
        return self.secure or self.dp is not None

    # -- secure aggregation ------------------------------------------------------------
    def actor_class(self, participant_cls: type) -> Any:
        """``ray.remote(Participant)``, with a thread for masking calls beside training."""
        if self.secure:
            return ray.remote(concurrency_groups={SECAGG_GROUP: 1})(participant_cls)
        return ray.remote(participant_cls)

    def forget(self, name: str) -> None:
        """A failed actor may come back with a new key: fetch it again next time."""
        self.public_keys.pop(name, None)

    def check(self, update: Update) -> str | None:
        """Hygiene for a sealed update's receipt (the participant checked the plaintext)."""
        if update.payload.size != 0:
            return "secure aggregation expects a sealed update, got a plaintext payload"
        if update.metrics.get(SEALED_METRIC) != 1.0:
            return "non-finite update: the participant refused to seal it"
        return None

    def hold_back(self, buffer: Sequence[Update], full: bool) -> set[str]:
        """Participants not to give new work now: those whose sealed updates would exceed
        what they keep, and, while a full buffer waits for more participants to mix in,
        those already in it (more updates of theirs would not help the cohort)."""
        if not self.secure:
            return set()
        counts = Counter(u.participant for u in buffer)
        out = {name for name, count in counts.items() if count >= MAX_SEALED}
        if full and self.cohort_too_small(buffer):
            out |= set(counts)
        return out

    def cohort_too_small(self, batch: Sequence[Update]) -> bool:
        """Whether decoding this batch's sum would reveal too little-mixed a total."""
        return self.secure and len({u.participant for u in batch}) < self.config.min_cohort

    # -- aggregation ----------------------------------------------------------------------
    def waiting_for_cohort(self, buffer: Sequence[Update], more_can_arrive: bool) -> bool:
        """Secure FedBuff holds a buffer of too few participants while more can still
        arrive (a task in flight, or a participant back soon)."""
        return more_can_arrive and self.cohort_too_small(buffer)

    def combine_recorded(self, batch: list[Update], layout: Layout, members: dict[str, Any], history: History,
                         version: int) -> tuple[list[Update], list[Update]] | None:
        """What the strategy sees (the batch, or one private aggregate under secure
        aggregation / DP) and the updates it counts; None when the cohort was aborted.
        Both outcomes are history events."""
        try:
            seen, dropped = self.combine(batch, layout, members)
        except SecureAggregationAbort as exc:
            history.record("aggregation_aborted", version=version, detail=str(exc),
                           num_examples=sum(u.num_examples for u in batch))
            return None
        for name in dropped:  # left the cohort after their update arrived
            history.record("secagg_dropout", participant=name, group=members[name].group, version=version,
                           detail="sent no masked update; left out of the sum")
        return seen, [u for u in batch if u.participant not in dropped]

    def combine(self, batch: list[Update], layout: Layout, by_name: dict[str, Any]) -> tuple[list[Update], list[str]]:
        """The batch the strategy sees (unchanged, or one private aggregate update) and the
        cohort members that dropped out of secure aggregation (their masks were recovered)."""
        if not self.active or not batch:
            return batch, []
        if self.cohort_too_small(batch):
            raise SecureAggregationAbort(
                f"{len({u.participant for u in batch})} participant(s) in the cohort, fewer than "
                f"privacy.min_cohort={self.config.min_cohort}: their sum would reveal too much")
        dropped: list[str] = []
        if self.secure:
            # the sum of [w n d, n]; under DP participants send [w clip(d), 1] instead
            total, count, dropped = self._secure_sum(batch, layout.size, by_name)
            batch = [u for u in batch if u.participant not in dropped]
            if self.dp is not None:
                total = total + gaussian_noise(total.size, self.dp, self.rng)
            payload = total / max(count, 1e-12)
        elif self.dp is not None:
            # each clipped delta scaled by its staleness weight, as participants do under
            # secure aggregation: the combined update below carries weight 1
            payload = noisy_mean([u.payload for u in batch], self.dp, self.rng,
                                 weights=[u.weight for u in batch])
        if self.accountant is not None:
            cohort = len({u.participant for u in batch})
            self.accountant.step(sample_rate=cohort / self.num_participants)
        first = batch[0]
        return [Update(
            participant=f"<{len(batch)} combined>", base_version=min(u.base_version for u in batch),
            kind=first.kind, payload=np.asarray(payload, dtype=np.float32), layout=layout,
            num_examples=sum(u.num_examples for u in batch), task_id=first.task_id,
            staleness=max(u.staleness for u in batch), weight=1.0,
        )], dropped

    def _secure_sum(
        self, batch: list[Update], size: int, by_name: dict[str, Any]
    ) -> tuple[np.ndarray, float, list[str]]:
        """Mask, collect, recover, decode. Raises :class:`SecureAggregationAbort` when the
        sum cannot be decoded safely; returns ``(sum, count, dropped members)``.
        ``by_name`` holds each participant's driver-side ``Member`` (its ``call``)."""
        weights: dict[str, dict[int, float]] = {u.participant: {} for u in batch}
        for u in batch:
            weights[u.participant][u.task_id] = float(u.weight)
        clip = self.dp.clip_norm if self.dp is not None else None
        total, dropped = self.secure_sum(
            {name: by_name[name] for name in weights}, size + 1,
            lambda name, cohort_id, peers: self.call(by_name[name], "masked_update", cohort_id, peers,
                                                      weights[name], clip))
        return total[:size], float(total[size]), dropped

    def secure_sum(self, members: dict[str, Any], size: int,
                   ask: Callable[[str, int, dict[str, bytes]], ray.ObjectRef]) -> tuple[np.ndarray, list[str]]:
        """The sum of one masked vector of ``size`` per member (``ask(name, cohort_id, peers)``
        requests one), decoded: mask, collect, recover the masks of members that dropped
        out. Raises :class:`SecureAggregationAbort` when the sum cannot be decoded safely.
        Model updates and federated preprocessing's statistics both go through here."""
        names = sorted(members)
        missing = [n for n in names if n not in self.public_keys]
        self.public_keys |= self._collect({self.call(members[n], "public_key"): n for n in missing})
        cohort = [n for n in names if n in self.public_keys]
        peers = {n: self.public_keys[n] for n in cohort}
        cohort_id = next(self.cohort_ids)
        masked = self._collect({ask(n, cohort_id, peers): n for n in cohort})
        survivors = sorted(masked)
        dropped = sorted(set(names) - set(survivors))
        for name in dropped:
            self.forget(name)
        if len(survivors) < self.config.min_cohort:
            raise SecureAggregationAbort(
                f"only {len(survivors)} of cohort {cohort_id} sent masked updates "
                f"(privacy.min_cohort={self.config.min_cohort}); dropped: {dropped}")
        lost = sorted(set(cohort) - set(survivors))  # masked with these: their masks must go
        recovered: list[np.ndarray] = []
        if lost:
            refs = {self.call(members[n], "unmask_dropped", cohort_id, lost, peers, size): n
                    for n in survivors}
            answers = self._collect(refs)
            if len(answers) < len(refs):
                raise SecureAggregationAbort(
                    f"cohort {cohort_id}: survivors {sorted(set(survivors) - set(answers))} did not "
                    f"return the masks of dropped members {lost}")
            recovered = list(answers.values())
        return unmask_sum([masked[n] for n in survivors], recovered), dropped

    @staticmethod
    def call(member: Any, method: str, *args: Any) -> ray.ObjectRef:
        """A masking call beside training (its own concurrency group), on the participant's
        actor or on the pool worker serving it (``Member.call`` names the participant)."""
        return member.call(method, *args, concurrency_group=SECAGG_GROUP)

    @staticmethod
    def _collect(refs: dict[ray.ObjectRef, str]) -> dict[str, Any]:
        """Results by member name of the calls that answered within the timeout without error."""
        if not refs:
            return {}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=KEY_TIMEOUT_S)
        out = {}
        for ref in ready:
            with contextlib.suppress(ray.exceptions.RayError):  # a dead or failing member drops out
                out[refs[ref]] = ray.get(ref)
        return out

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
