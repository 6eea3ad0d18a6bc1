"""The client half of a strategy: what a participant does with one task.

A strategy is two halves in one module. The server half is its pure ``aggregate``; the
client half is a small :class:`Client` the participant builds once from the run's
strategy and calls for every task. The client decides the local work (plain training, a
proximal term, distillation, head-then-body, control variates) and keeps its own client
state (a personal model, a control variate), which the participant saves with its
private state so that a restarted actor, or another worker, goes on from it.

The client never touches torch or the data itself: it asks a :class:`LocalModel`, which
the participant implements (``actors/training/local_model.py``), for a handful of operations on
flat float32 vectors. That keeps ``strategies`` free of ``actors`` imports, and a new
algorithm's local side a few lines of numpy that read like the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from strategies.types import GlobalState, Layout

if TYPE_CHECKING:
    from strategies.base import Strategy


# -- terms a client adds to the local loss ------------------------------------------------
@dataclass(frozen=True)
class Proximal:
    """``mu / 2 * ||w - anchor||^2`` over the whole model (FedProx, Ditto's personal model)."""

    mu: float
    anchor: np.ndarray


@dataclass(frozen=True)
class Linear:
    """``<coef, w>`` over the whole model: adds ``coef`` to every gradient, which is how
    SCAFFOLD corrects client drift with ``c - c_i``."""

    coef: np.ndarray


@dataclass(frozen=True)
class ConsensusKD:
    """``weight`` times the distillation loss towards ``teacher`` (logits on the public
    set) on a random public batch as large as each private batch."""

    teacher: np.ndarray
    temperature: float
    weight: float


Term = Proximal | Linear | ConsensusKD


@dataclass(frozen=True)
class Work:
    """How much local work one task asks for; ``steps``, when set, overrides ``epochs``."""

    seed: int
    epochs: int
    steps: int | None = None


@dataclass(frozen=True)
class Plan:
    """What the driver knows of one task's local work before it runs: enough for the client
    half to say how many samples it will process (the task's duration under the simulated
    clock), in :meth:`Client.planned_samples`, next to the work it describes."""

    work: Work
    batch_size: int
    num_examples: int
    """Private training examples."""
    public_size: int = 0
    """Examples in the run's public set (the soft-label strategies distill on it)."""
    version: int = 0
    """The global version the task starts from."""

    def pass_samples(self, epochs: int | None = None) -> int:
        """Samples one :meth:`LocalModel.train` call processes: ``work.steps`` batches,
        else ``epochs`` (default: the task's) passes over the private data."""
        if self.work.steps:
            return self.work.steps * self.batch_size
        return (self.work.epochs if epochs is None else epochs) * self.num_examples


class LocalModel(Protocol):
    """The operations a participant offers its client half (``actors/training/local_model.py``).

    Vectors are flat float32 in ``layout`` order, or in the sub-layout given.
    """

    layout: Layout
    num_examples: int
    lr: float

    def get(self, layout: Layout | None = None) -> np.ndarray: ...

    def set(self, values: np.ndarray, layout: Layout | None = None) -> None: ...

    def train(self, work: Work, terms: Sequence[Term] = (), trainable: str | None = None) -> dict[str, float]:
        """Local optimisation on private data; ``trainable`` limits it to parameters whose
        names start with that prefix (``"head."``). Metrics include ``samples`` and ``steps``."""
        ...

    def gradient(self, seed: int) -> tuple[np.ndarray, dict[str, float]]:
        """The mean-loss gradient on one private batch at the current parameters."""
        ...

    def evaluate(self) -> dict[str, float]:
        """``loss`` and ``accuracy`` of the current model on this participant's test split."""
        ...

    def public_logits(self) -> np.ndarray:
        """Logits on the run's public set, ``(public_size, classes)``."""
        ...

    def distill(self, teacher: np.ndarray, temperature: float, epochs: int, seed: int) -> float:
        """Fit the current model to ``teacher``'s soft labels on the public set."""
        ...


@dataclass
class Result:
    """What one task produced: the payload, its layout, metrics and declared extras."""

    payload: np.ndarray
    layout: Layout
    metrics: dict[str, float]
    extras: dict[str, np.ndarray] = field(default_factory=dict)


class Client:
    """Base client half. Subclasses implement :meth:`work`; ``self.state`` is the client
    state (numpy arrays), saved by the participant after every task.

    >>> class Twice(Client):
    ...     def work(self, model, state, work):
    ...         return Result(2 * state.params, state.layout, {})
    >>> Twice(None).state_dict()
    {}
    """

    def __init__(self, strategy: Strategy | Any) -> None:
        self.strategy = strategy
        self.params = getattr(strategy, "params", None)
        self.state: dict[str, np.ndarray] = {}

    def work(self, model: LocalModel, state: GlobalState, work: Work) -> Result:
        raise NotImplementedError

    def planned_samples(self, plan: Plan) -> int:
        """Samples :meth:`work` processes for ``plan``: one training pass unless a client
        half that does more (or less) says so, beside its ``work``."""
        return plan.pass_samples()

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: np.array(v, copy=True) for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.state = {k: np.array(v, dtype=np.float32, copy=True) for k, v in state.items()}


class WeightsClient(Client):
    """Start from the global model, train locally, send the delta (FedAvg and kin).

    Subclasses add loss terms through :meth:`terms` (FedProx's proximal term, say).
    """

    def work(self, model: LocalModel, state: GlobalState, work: Work) -> Result:
        start = np.asarray(state.params, dtype=np.float32)
        model.set(start, state.layout)
        metrics = model.train(work, self.terms(state))
        return Result(model.get(state.layout) - start, state.layout, metrics)

    def terms(self, state: GlobalState) -> Sequence[Term]:
        return ()


class GradientClient(Client):
    """Send the local gradient at the global model (FedSGD); the server owns the step."""

    def work(self, model: LocalModel, state: GlobalState, work: Work) -> Result:
        model.set(np.asarray(state.params, dtype=np.float32), state.layout)
        gradient, metrics = model.gradient(work.seed)
        return Result(gradient, state.layout, metrics)

    def planned_samples(self, plan: Plan) -> int:
        return min(plan.batch_size, plan.num_examples)  # one batch


class PersonalClient(Client):
    """Shared machinery for clients that keep a personal model between tasks.

    The whole local model is client state (``self.state["model"]``), restored before each
    task and saved after it, so personal parameters survive an actor restart and can be
    served by any process that holds the client state.
    """

    def restore(self, model: LocalModel) -> None:
        if "model" in self.state:
            model.set(self.state["model"])

    def keep(self, model: LocalModel) -> None:
        self.state["model"] = model.get()


def with_test_metrics(metrics: dict[str, float], tested: dict[str, float]) -> dict[str, float]:
    """``metrics`` plus the evaluation prefixed ``test_`` (what the driver reports)."""
    return metrics | {f"test_{k}": v for k, v in tested.items()}
