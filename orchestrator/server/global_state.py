"""What the global state *is*, as the strategy declares it (``Strategy.global_state``), so
the run loop need not know.

The run loop only moves one flat float32 vector and its :class:`Layout`. What that vector
means differs by family, and so do its start value, the layout each participant's update
must have, and how the run is evaluated:

- :class:`SharedWeights` (FedAvg and the other weight strategies): one architecture; the
  vector is its parameters; the server evaluates it on the test split.
- :class:`SharedParts` (FedPer, FedRep, LG-FedAvg, local-only; FedDF per family): the
  union of the shared parameters, matched by name and shape; each participant sends only
  its shared part and keeps the rest.
- :class:`SoftLabels` (FedMD, DS-FL): the consensus logits on the public set.

Without one global model, each participant evaluates its own model on the shared test
split (in its own view) after each task and reports it with its update; the run's
``evaluation`` event is the mean of the latest report of every participant (a
participant-weighted mean, the usual number in personalised FL). Nothing blocks on a
straggler: reports ride on updates.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from actors.spec.training import METRICS, TaskSpec
from orchestrator.config import RunConfig
from orchestrator.server.evaluation_host import GlobalEvaluator, build_evaluator, driver_node_hosts
from strategies import STRATEGIES
from strategies.base import ServerContext, Strategy
from strategies.partial import global_positions, shared_part, union_layout
from strategies.types import Layout, Update

if TYPE_CHECKING:
    from orchestrator.server.server_models import FamilyModels


class GlobalStateError(RuntimeError):
    """The participants' models cannot be combined by this strategy; says who and why."""


class GlobalModel:
    """The interface the run loop uses; subclasses fill in ``layout`` and ``params``."""

    layout: Layout
    params: np.ndarray

    def expected_layout(self, participant: str) -> Layout | None:
        """The layout ``participant``'s updates must have (None: do not check)."""
        return self.layout

    def observe(self, update: Update) -> None:
        """See every update that passed the checks (participants' own test metrics)."""

    def evaluate(self, params: np.ndarray, shipped: ray.ObjectRef | None = None) -> dict[str, float]:
        """Metrics of ``params``; ``shipped``, where given, is the broadcast
        :class:`~strategies.types.GlobalState` holding them, which an evaluator on a pool
        worker reads instead of a second copy."""
        raise NotImplementedError


class SharedWeights(GlobalModel):
    """One architecture for all: the global vector is its parameters, evaluated on the
    server's test set."""

    def __init__(self, config: RunConfig, members: list[Any], strategy: Strategy) -> None:
        first = members[0]
        for m in members:
            if m.info["layout"] != first.info["layout"]:
                mixed = ", ".join(sorted(n for n, c in STRATEGIES.items() if c.heterogeneous()))
                raise GlobalStateError(
                    f"participants {first.name} and {m.name} have different model layouts "
                    f"({first.info['layout'].size} vs {m.info['layout'].size} parameters); "
                    f"strategy {strategy.name!r} averages weights, so every group needs one "
                    f"architecture (for mixed architectures use one of: {mixed})"
                )
        self.layout = first.info["layout"]
        self.params = np.asarray(ray.get(first.call("initial_parameters")), dtype=np.float32)
        build = functools.partial(build_evaluator, config, first.group, first.info["num_classes"],
                                  first.spec.transform, first.info.get("feature_names", ()))
        self.evaluator = GlobalEvaluator(build, driver_node_hosts(members))
        if self.evaluator.info.layout != self.layout:
            raise GlobalStateError("the evaluation model's layout differs from the participants' model")

    def evaluate(self, params: np.ndarray, shipped: ray.ObjectRef | None = None) -> dict[str, float]:
        return {**self.evaluator(params, self.layout, shipped), "num_examples": self.evaluator.info.num_examples}

class ParticipantEvaluated(GlobalModel):
    """Evaluation = mean over participants of each metric they last reported on their own
    test split (``test_loss``, ``test_accuracy``, ``test_r2``, ...)."""

    def __init__(self, task: TaskSpec) -> None:
        self.names = ["loss", *METRICS[task.kind]]
        self.reports: dict[str, dict[str, float]] = {}

    def observe(self, update: Update) -> None:
        if "test_loss" in update.metrics:
            self.reports[update.participant] = update.metrics

    def evaluate(self, params: np.ndarray, shipped: ray.ObjectRef | None = None) -> dict[str, float]:
        out = {name: float("nan") for name in self.names}
        for name in self.names:
            values = [r[f"test_{name}"] for r in self.reports.values() if f"test_{name}" in r]
            finite = [v for v in values if v == v]  # AUROC is NaN on a one-class test split
            if finite:
                out[name] = float(np.mean(finite))
        return out | {"num_examples": len(self.reports)}


class SharedParts(ParticipantEvaluated):
    """The union of shared parameters (FedPer/FedRep/LG-FedAvg), or, per architecture
    family, whole models under ``fK/`` prefixes (FedDF)."""

    def __init__(self, config: RunConfig, members: list[Any], strategy: Strategy) -> None:
        super().__init__(config.task)
        per_family = strategy.global_state == "families"
        self.expected = {m.name: shared_part(m.info["layout"], strategy.shares) for m in members}
        firsts: dict[Layout, Any] = {}  # distinct architectures, first member of each
        for m in members:
            firsts.setdefault(m.info["layout"], m)
        if per_family:
            parts = [union_layout([lay], prefix=f"f{k}/") for k, lay in enumerate(firsts)]
            self.layout = Layout(sum((p.names for p in parts), ()), sum((p.shapes for p in parts), ()))
            self.prefixes = {lay: f"f{k}/" for k, lay in enumerate(firsts)}
        else:
            self.layout = union_layout(self.expected[m.name] for m in members)
            self.prefixes = {lay: "" for lay in firsts}
        self.families = [(self.prefixes[lay], m) for lay, m in firsts.items()]
        # start every shared coordinate from the first architecture that has it
        self.params = np.zeros(self.layout.size, np.float32)
        filled = np.zeros(self.layout.size, bool)
        for lay, m in firsts.items():
            part = lay if per_family else shared_part(lay, strategy.shares)
            if not part.names:
                continue
            init = np.asarray(ray.get(m.call("initial_parameters")), np.float32)
            values = init[global_positions(lay, part)]
            pos = global_positions(self.layout, part, self.prefixes[lay])
            fresh = ~filled[pos]
            self.params[pos[fresh]] = values[fresh]
            filled[pos] = True

    def expected_layout(self, participant: str) -> Layout | None:
        return self.expected[participant]

    def server_models(self, config: RunConfig) -> FamilyModels:
        """One model per family, rebuilt on the driver for server-side distillation (the
        one global state that imports torch in the driver)."""
        from orchestrator.server.server_models import FamilyModels

        assert config.dataset is not None
        try:
            return FamilyModels(config.dataset, [(prefix, m.spec, m.info["layout"], m.info["num_classes"])
                                                 for prefix, m in self.families], config.seed)
        except ValueError as exc:
            raise GlobalStateError(f"{exc}") from None


class SoftLabels(ParticipantEvaluated):
    """The consensus: logits on the public set, ``(public_size, num_classes)``, zeros at v0."""

    def __init__(self, config: RunConfig, members: list[Any], strategy: Strategy) -> None:
        super().__init__(config.task)
        if config.dataset is None or config.dataset.public_size == 0:
            raise GlobalStateError("soft-label strategies need dataset.public_size > 0")
        classes = {m.info["num_classes"] for m in members}
        if len(classes) != 1:
            raise GlobalStateError(f"soft labels need one label space, participants have {sorted(classes)} classes")
        self.layout = Layout(("logits",), ((config.dataset.public_size, classes.pop()),))
        self.params = np.zeros(self.layout.size, np.float32)


GLOBAL_MODELS: dict[str, type[GlobalModel]] = {
    "weights": SharedWeights, "parts": SharedParts, "families": SharedParts, "logits": SoftLabels,
}
"""What each declared ``Strategy.global_state`` is built by."""


def build_global_model(config: RunConfig, members: list[Any], strategy: Strategy) -> GlobalModel:
    """The global state the strategy declares, and the strategy set up for it."""
    model = GLOBAL_MODELS[strategy.global_state](config, members, strategy)  # type: ignore[call-arg]
    models = None
    if strategy.needs_server_models:
        if not isinstance(model, SharedParts):
            raise GlobalStateError(f"strategy {strategy.name!r}: server models need a per-family global state")
        models = model.server_models(config)
    strategy.setup(ServerContext(model.layout, config.num_participants, models, config.seed))
    return model
