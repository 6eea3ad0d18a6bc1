"""SCAFFOLD: control variates that correct client drift.

Karimireddy, Kale, Mohri, Reddi, Stich, Suresh, "SCAFFOLD: Stochastic Controlled
Averaging for Federated Learning", ICML 2020 (Algorithm 1, option II).

On skewed data each participant's local steps drift towards its own optimum. SCAFFOLD
keeps a server control variate ``c`` (an estimate of the global gradient direction) and
one per participant, ``c_i`` (its own). Every local step follows ``g_i(y) - c_i + c``, so
the participant descends the *global* direction; afterwards it refreshes its variate
from the step it actually took, ``c_i+ = c_i - c + (x - y_i) / (K * lr)`` with ``K`` the
local steps, and sends the delta ``y_i - x`` plus ``c_i+ - c_i``. The server moves
``x += server_lr * mean(delta)`` and ``c += sum(w_i * (c_i+ - c_i)) / N``, with ``N``
the number of participants in the run.

Option II's refresh assumes plain local SGD; with momentum or Adam it is an estimate.
``c`` is server state (checkpointed with the strategy); ``c_i`` is client state (kept in
the participant's private state, so a restarted actor keeps it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from strategies.base import Strategy, weighted_mean, weighted_sum
from strategies.client import Client, Linear, LocalModel, Result, Work
from strategies.types import GlobalState, Update

CONTROL = "control"


@dataclass(frozen=True)
class ScaffoldParams:
    server_lr: float = 1.0
    """``eta_g``: step on the averaged delta; the paper uses 1."""

    def __post_init__(self) -> None:
        if self.server_lr <= 0:
            raise ValueError(f"server_lr must be > 0, got {self.server_lr}")


class ScaffoldClient(Client):
    """Corrected local SGD, then option II's control-variate refresh."""

    def work(self, model: LocalModel, state: GlobalState, work: Work) -> Result:
        start = np.asarray(state.params, dtype=np.float32)
        server_c = np.asarray(state.extra.get(CONTROL, np.zeros_like(start)), dtype=np.float32)
        own_c = self.state.get(CONTROL, np.zeros_like(start))
        model.set(start, state.layout)
        metrics = model.train(work, (Linear(server_c - own_c),))
        delta = model.get(state.layout) - start
        steps = metrics.get("steps", 0.0)  # no step (no data): nothing learnt, keep c_i
        new_c = own_c - server_c - delta / np.float32(steps * model.lr) if steps > 0 else own_c
        self.state[CONTROL] = new_c.astype(np.float32)
        return Result(delta, state.layout, metrics, {CONTROL: (new_c - own_c).astype(np.float32)})


class Scaffold(Strategy):
    """FedAvg on the deltas plus the server control variate.

    >>> from strategies.base import ServerContext
    >>> from strategies.types import Layout, Update
    >>> lay = Layout(("w",), ((2,),))
    >>> s = Scaffold(); s.setup(ServerContext(lay, num_participants=4))
    >>> u = Update("a", 0, "delta", np.array([1., 0.], np.float32), lay, 1,
    ...            extras={"control": np.array([2., 4.], np.float32)})
    >>> s.aggregate(np.zeros(2, np.float32), [u]).tolist(), s.broadcast()["control"].tolist()
    ([1.0, 0.0], [0.5, 1.0])
    """

    name = "scaffold"
    Params = ScaffoldParams
    Client = ScaffoldClient
    update_extras = (CONTROL,)
    supports_private_aggregation = False  # the control deltas are not masked or noised
    supports_dp_sgd = False

    def aggregate(self, global_params: np.ndarray, updates: Sequence[Update]) -> np.ndarray:
        if self.context is None:
            raise RuntimeError("scaffold: setup(context) before aggregating")
        step = weighted_mean(updates)
        weights = np.array([u.weight for u in updates], dtype=np.float64)
        control = self._control(global_params.size)
        control += weighted_sum([u.extras[CONTROL] for u in updates], weights / self.context.num_participants)
        return global_params + np.float32(self.params.server_lr) * step

    def broadcast(self) -> dict[str, np.ndarray]:
        if self.context is None:
            return {}
        return {CONTROL: self._control(self.context.layout.size).copy()}

    def _control(self, size: int) -> np.ndarray:
        if CONTROL not in self.state:
            self.state[CONTROL] = np.zeros(size, dtype=np.float32)
        return self.state[CONTROL]
