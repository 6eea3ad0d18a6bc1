"""Ditto: a personal model per participant, regularised towards the global one.

Li, Hu, Beirami, Smith, "Ditto: Fair and Robust Federated Learning Through
Personalization", ICML 2021 (Algorithm 1).

The global model is trained exactly as FedAvg trains it: each task starts from it, trains
locally and sends the delta. Beside it each participant keeps a personal model ``v_i``
that never leaves it, trained on its own data with ``lam / 2 * ||v_i - w||^2`` pulling it
towards the global model ``w`` it just received. ``lam = 0`` is local training alone;
a large ``lam`` makes ``v_i`` the global model. The participant reports the personal
model's accuracy on its own test split with each update (``test_accuracy``), the number
personalisation is judged by; the server still evaluates the global model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from strategies.client import Client, LocalModel, Plan, Proximal, Result, Work, with_test_metrics
from strategies.fedavg import FedAvg
from strategies.types import GlobalState


@dataclass(frozen=True)
class DittoParams:
    lam: float = 0.1
    """Pull of the personal model towards the global one; the paper tunes it in 0.05..2."""
    personal_epochs: int | None = None
    """Local epochs of the personal model per task; default: the group's ``local_epochs``."""
    server_lr: float = 1.0
    """Step on the averaged delta of the global model, as in FedAvg."""

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")
        if self.personal_epochs is not None and self.personal_epochs < 1:
            raise ValueError(f"personal_epochs must be >= 1, got {self.personal_epochs}")


class DittoClient(Client):
    """Update the personal model, then train the global model and send its delta."""

    def work(self, model: LocalModel, state: GlobalState, work: Work) -> Result:
        p = self.params
        start = np.asarray(state.params, dtype=np.float32)
        model.set(self.state.get("personal", start), state.layout)
        personal_work = Work(work.seed + 1, p.personal_epochs or work.epochs, work.steps)
        personal = model.train(personal_work, (Proximal(p.lam, start),) if p.lam > 0 else ())
        tested = model.evaluate()
        self.state["personal"] = model.get(state.layout)
        model.set(start, state.layout)
        metrics = model.train(work)
        metrics |= {"personal_loss": personal["train_loss"],
                    "samples": metrics["samples"] + personal["samples"]}
        return Result(model.get(state.layout) - start, state.layout, with_test_metrics(metrics, tested))

    def planned_samples(self, plan: Plan) -> int:
        return plan.pass_samples(self.params.personal_epochs) + plan.pass_samples()  # personal, then global


class Ditto(FedAvg):
    """FedAvg's server half; the client half keeps and reports a personal model."""

    name = "ditto"
    Params = DittoParams
    Client = DittoClient
    supports_dp_sgd = False
