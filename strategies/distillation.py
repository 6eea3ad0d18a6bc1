"""Soft-label strategies: participants with different architectures learn from each other
through predictions on a shared, unlabelled public set instead of through weights.

The global state of FedMD and DS-FL is a consensus: one ``(public_size, num_classes)``
array of logits, flattened. Each task a participant distills the consensus (KL at
temperature ``T``, times ``T**2``), trains on its private data, and sends back its logits
on the public set. What travels does not grow with the model: 10 floats per public
example, whatever the architecture.

- ``FedMD`` (Li & Wang, "FedMD: Heterogenous Federated Learning via Model Distillation",
  2019): the consensus is the (example-weighted) mean of the participants' logits.
- ``DSFL`` (Itahara et al., "Distillation-Based Semi-Supervised Federated Learning for
  Communication-Efficient Collaborative Training with Non-IID Private Data", IEEE TMC
  2021): entropy-reduction aggregation, the mean of the participants' softmax outputs
  sharpened by a temperature below 1, which keeps the consensus confident on non-IID data.
- ``FedDF`` (Lin et al., "Ensemble Distillation for Robust Model Fusion in Federated
  Learning", NeurIPS 2020): participants send weights; the server averages them per
  architecture family, then distills the ensemble of the received models into each
  family's average on the public set. The ensemble logic lives here; the models it runs
  come from ``ServerContext.models`` (``orchestrator/server/server_models.py``), which the driver
  builds because the class declares ``needs_server_models``.

Under FedBuff/FedAsync schedules the consensus moves like weights do: by the
example-weighted mean of ``(update - consensus)``, each scaled by its staleness weight; in
synchronous rounds with fresh updates that is exactly the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from strategies.base import Strategy
from strategies.client import (
    ConsensusKD,
    LocalModel,
    PersonalClient,
    Plan,
    Result,
    Term,
    Work,
    with_test_metrics,
)
from strategies.partial import SharedPartClient, average_by_name, family_prefix, global_positions
from strategies.types import GlobalState, Layout, Update


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``, numerically stable."""
    z = logits / np.float32(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def mix_towards(current: np.ndarray, targets: Sequence[np.ndarray], updates: Sequence[Update]) -> np.ndarray:
    """``current`` plus the example-weighted mean of ``target_i - current`` (weights scaled).

    The same rule as FedBuff's: with all weights 1 this returns the weighted mean of
    ``targets``; a stale update (weight < 1) pulls the result less.
    """
    if not updates:
        raise ValueError("cannot aggregate an empty batch of updates")
    counts = np.array([max(u.num_examples, 1) for u in updates], np.float64)
    coef = counts * np.array([u.weight for u in updates], np.float64) / counts.sum()
    stacked = np.stack(targets) - current
    return (current + coef.astype(np.float32) @ stacked).astype(np.float32)


@dataclass(frozen=True)
class DistillParams:
    temperature: float = 2.0
    """Softening temperature ``T`` of the participants' KL distillation loss."""
    distill_epochs: int = 2
    """Passes over the public set distilling the consensus before private training."""
    revisit_kd_weight: float = 0.0
    """Weight of a consensus KD term on a public batch added to every private batch, so
    private training does not wash out what was distilled; 0 is the papers' plain
    "digest, then revisit" (an extension, off by default)."""


class DistillClient(PersonalClient):
    """Digest the consensus, revisit the private data, predict the public set.

    Version 0 has no consensus yet (only zeros), so the first task skips distillation.
    """

    def work(self, model: LocalModel, state: GlobalState, work: Work) -> Result:
        self.restore(model)
        p = self.params
        metrics: dict[str, float] = {}
        terms: tuple[Term, ...] = ()
        if state.version > 0:
            teacher = np.asarray(state.params, dtype=np.float32).reshape(state.layout.shapes[0])
            metrics["distill_loss"] = model.distill(teacher, p.temperature, p.distill_epochs, work.seed)
            if p.revisit_kd_weight > 0:
                terms = (ConsensusKD(teacher, p.temperature, p.revisit_kd_weight),)
        metrics |= model.train(work, terms)
        logits = np.asarray(model.public_logits(), dtype=np.float32)
        tested = model.evaluate()
        self.keep(model)
        layout = Layout(("logits",), (tuple(logits.shape),))
        return Result(logits.reshape(-1), layout, with_test_metrics(metrics, tested))

    def planned_samples(self, plan: Plan) -> int:
        p = self.params
        digest = p.distill_epochs * plan.public_size if plan.version > 0 else 0
        return digest + plan.pass_samples() * (2 if p.revisit_kd_weight > 0 else 1)  # (a public batch per private one)


class SoftLabelStrategy(Strategy):
    """Shared machinery: payload ``logits`` on the public set, a distilling client."""

    payload = "logits"
    global_state = "logits"
    Params: ClassVar[type] = DistillParams
    Client = DistillClient
    needs_public_set = True
    supports_private_aggregation = False
    supports_dp_sgd = False


class FedMD(SoftLabelStrategy):
    """Consensus = mean of the participants' public-set logits.

    >>> from strategies.types import Layout, Update
    >>> lay = Layout(("logits",), ((1, 2),))
    >>> ups = [Update("a", 0, "logits", np.array([2., 0.], np.float32), lay, 1),
    ...        Update("b", 0, "logits", np.array([0., 2.], np.float32), lay, 1)]
    >>> FedMD().aggregate(np.zeros(2, np.float32), ups).tolist()
    [1.0, 1.0]
    """

    name = "fedmd"

    def aggregate(self, global_params: np.ndarray, updates: Sequence[Update]) -> np.ndarray:
        return mix_towards(global_params, [u.payload for u in updates], updates)


@dataclass(frozen=True)
class DSFLParams(DistillParams):
    era_temperature: float = 0.5
    """Entropy-reduction temperature (< 1 sharpens the averaged soft labels)."""


class DSFL(SoftLabelStrategy):
    """Entropy-reduction aggregation: average the participants' probabilities, sharpen
    them with ``p ** (1 / era_temperature)`` (renormalised), send log-probabilities.

    >>> from strategies.types import Layout, Update
    >>> lay = Layout(("logits",), ((1, 2),))
    >>> up = Update("a", 0, "logits", np.log(np.array([0.75, 0.25], np.float32)), lay, 1)
    >>> [round(float(p), 2) for p in np.exp(DSFL().aggregate(np.zeros(2, np.float32), [up]))]
    [0.9, 0.1]
    """

    name = "dsfl"
    Params = DSFLParams

    def aggregate(self, global_params: np.ndarray, updates: Sequence[Update]) -> np.ndarray:
        if not updates:  # before reading the class count off the first update
            raise ValueError("cannot aggregate an empty batch of updates")
        num_classes = updates[0].layout.shapes[0][-1]
        current = softmax(global_params.reshape(-1, num_classes)).reshape(-1)
        probs = [softmax(u.payload.reshape(-1, num_classes)).reshape(-1) for u in updates]
        mean = np.clip(mix_towards(current, probs, updates), 1e-8, None).reshape(-1, num_classes)
        sharpened = softmax(np.log(mean) / np.float32(self.params.era_temperature))
        return np.log(np.clip(sharpened, 1e-8, None)).reshape(-1).astype(np.float32)


@dataclass(frozen=True)
class FedDFParams:
    temperature: float = 1.0
    """Temperature of the server's distillation loss."""
    server_epochs: int = 2
    """Passes over the public set the server distills each family model for."""
    server_lr: float = 1e-3
    """Adam step size of the server-side distillation."""


class FedDF(Strategy):
    """Per-family FedAvg, then ensemble distillation of all received models into each
    family's average on the public set. Without server models it is FedAvg within each
    architecture family.
    """

    name = "feddf"
    Params = FedDFParams
    Client = SharedPartClient
    global_state = "families"
    shares = "all"
    needs_public_set = True
    needs_server_models = True
    supports_private_aggregation = False
    supports_dp_sgd = False

    def aggregate(self, global_params: np.ndarray, updates: Sequence[Update]) -> np.ndarray:
        if self.context is None:
            raise RuntimeError("feddf: setup(context) before aggregating")
        layout, models = self.context.layout, self.context.models
        averaged = average_by_name(global_params, layout, updates, per_family=True)
        if models is None:
            return averaged
        received = []
        for u in updates:  # each received model, whole, run by its own family's network
            prefix = family_prefix(layout, u.layout)
            base = global_params[global_positions(layout, u.layout, prefix)]
            received.append(models.logits(prefix, base + u.payload))
        teacher = np.mean(np.stack(received), axis=0, dtype=np.float32)
        calls = int(self.state.get("distill_calls", np.zeros(1))[0])
        self.state["distill_calls"] = np.array([calls + 1], dtype=np.float32)
        out = averaged.copy()
        p = self.params
        for prefix in models.prefixes:
            pos = global_positions(layout, models.layout(prefix), prefix)
            out[pos] = models.distill(prefix, averaged[pos], teacher, p.temperature, p.server_epochs,
                                      p.server_lr, self.context.seed + calls)
        return out
