"""What the global state *is*, per strategy family, so the run loop need not know.

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

from typing import Any

import numpy as np
import ray
import torch

from actors.distillation import distill, load_public_set, predict_logits
from actors.models import build_model
from actors.params import get_flat, layout_of, set_flat
from actors.personalised import shared_part
from actors.spec import TrainSpec
from orchestrator.config import RunConfig
from orchestrator.evaluation import ServerEvaluator
from strategies.base import Strategy
from strategies.partial import global_positions, union_layout
from strategies.types import Layout, Update


class GlobalStateError(RuntimeError):
    """The participants' models cannot be combined by this strategy; says who and why."""


class GlobalModel:
    """The interface the run loop uses; subclasses fill in ``layout`` and ``params``."""

    layout: Layout
    params: np.ndarray

    def expected_layout(self, participant: str) -> Layout | None:
        """The layout ``participant``'s updates must have (None: do not check)."""
        return self.layout

    def task_options(self, participant: str) -> dict[str, Any]:
        """Per-participant extras for its task instructions."""
        return {}

    def observe(self, update: Update) -> None:
        """See every update that passed the checks (participants' own test metrics)."""

    def evaluate(self, params: np.ndarray) -> dict[str, float]:
        raise NotImplementedError


class SharedWeights(GlobalModel):
    """One architecture for all: the foundation's path, server-side evaluation."""

    def __init__(self, config: RunConfig, members: list[Any]) -> None:
        first = members[0]
        for m in members:
            if m.info["layout"] != first.info["layout"]:
                raise GlobalStateError(
                    f"participants {first.name} and {m.name} have different model layouts "
                    f"({first.info['layout'].size} vs {m.info['layout'].size} parameters); "
                    "weight-averaging strategies need one architecture for all groups "
                    "(for mixed architectures use fedmd, dsfl, feddf, fedper, fedrep or lg_fedavg)"
                )
        self.layout = first.info["layout"]
        self.params = np.asarray(ray.get(first.handle.initial_parameters.remote()), dtype=np.float32)
        self.evaluator = ServerEvaluator(config, config.groups[0])
        if self.evaluator.layout != self.layout:
            raise GlobalStateError("the evaluation model's layout differs from the participants' model")

    def evaluate(self, params: np.ndarray) -> dict[str, float]:
        return {**self.evaluator(params, self.layout), "num_examples": self.evaluator.num_examples}


class ParticipantEvaluated(GlobalModel):
    """Evaluation = mean of each participant's latest self-reported test accuracy."""

    def __init__(self) -> None:
        self.reports: dict[str, dict[str, float]] = {}

    def observe(self, update: Update) -> None:
        if "test_accuracy" in update.metrics:
            self.reports[update.participant] = update.metrics

    def evaluate(self, params: np.ndarray) -> dict[str, float]:
        if not self.reports:
            return {"loss": float("nan"), "accuracy": float("nan"), "num_examples": 0}
        acc = [r["test_accuracy"] for r in self.reports.values()]
        loss = [r["test_loss"] for r in self.reports.values()]
        return {"loss": float(np.mean(loss)), "accuracy": float(np.mean(acc)), "num_examples": len(acc)}


class SharedParts(ParticipantEvaluated):
    """The union of shared parameters (FedPer/FedRep/LG-FedAvg), or, per architecture
    family, whole models under ``fK/`` prefixes (FedDF)."""

    def __init__(self, config: RunConfig, members: list[Any], strategy: Strategy) -> None:
        super().__init__()
        sharing = strategy.sharing  # type: ignore[attr-defined]
        per_family = getattr(strategy, "per_family", False)
        self.expected = {m.name: shared_part(m.info["layout"], sharing) for m in members}
        families: dict[Layout, Any] = {}  # distinct architectures, first member of each
        for m in members:
            families.setdefault(m.info["layout"], m)
        if per_family:
            parts = [union_layout([lay], prefix=f"f{k}/") for k, lay in enumerate(families)]
            self.layout = Layout(sum((p.names for p in parts), ()), sum((p.shapes for p in parts), ()))
            self.prefixes = {lay: f"f{k}/" for k, lay in enumerate(families)}
        else:
            self.layout = union_layout(self.expected[m.name] for m in members)
            self.prefixes = {lay: "" for lay in families}
        # start every shared coordinate from the first architecture that has it
        self.params = np.zeros(self.layout.size, np.float32)
        filled = np.zeros(self.layout.size, bool)
        for lay, m in families.items():
            part = lay if per_family else shared_part(lay, sharing)
            if not part.names:
                continue
            init = np.asarray(ray.get(m.handle.initial_parameters.remote()), np.float32)
            values = init[global_positions(lay, part)]
            pos = global_positions(self.layout, part, self.prefixes[lay])
            fresh = ~filled[pos]
            self.params[pos[fresh]] = values[fresh]
            filled[pos] = True
        bind = strategy.bind  # type: ignore[attr-defined]
        if per_family:
            bind(self.layout, FamilyDistiller(config, families, self.prefixes, strategy.params, self.layout))
        else:
            bind(self.layout)

    def expected_layout(self, participant: str) -> Layout | None:
        return self.expected[participant]


class SoftLabels(ParticipantEvaluated):
    """The consensus: logits on the public set, ``(public_size, num_classes)``, zeros at v0."""

    def __init__(self, config: RunConfig, members: list[Any]) -> None:
        super().__init__()
        if config.dataset is None or config.dataset.public_size == 0:
            raise GlobalStateError("soft-label strategies need dataset.public_size > 0")
        classes = {m.info["num_classes"] for m in members}
        if len(classes) != 1:
            raise GlobalStateError(f"soft labels need one label space, participants have {sorted(classes)} classes")
        self.layout = Layout(("logits",), ((config.dataset.public_size, classes.pop()),))
        self.params = np.zeros(self.layout.size, np.float32)


class FamilyDistiller:
    """FedDF's server side: distill the ensemble of received models into each family's
    averaged model on the public set (each family sees it in its own view)."""

    def __init__(self, config: RunConfig, families: dict[Layout, Any], prefixes: dict[Layout, str],
                 params: Any, global_layout: Layout) -> None:
        assert config.dataset is not None
        torch.manual_seed(config.seed)
        self.global_layout = global_layout
        self.params = params
        self.seed = config.seed
        self.models: dict[str, tuple[torch.nn.Module, Layout, torch.Tensor]] = {}
        for layout, member in families.items():
            spec = member.spec
            public = torch.as_tensor(load_public_set(config.dataset, spec.data.view))
            model = build_model(spec.model.name, spec.model.options, tuple(public.shape[1:]),
                                member.info["num_classes"])
            if layout_of(model) != layout:
                raise GlobalStateError(f"feddf: cannot rebuild {member.name}'s model on the server")
            self.models[prefixes[layout]] = (model, layout, public)
        self.calls = 0

    def __call__(self, averaged: np.ndarray, received: list[tuple[str, np.ndarray]]) -> np.ndarray:
        teacher = torch.stack([self._logits(prefix, vec) for prefix, vec in received]).mean(0)
        out = averaged.copy()
        spec = TrainSpec(optimizer="adam", lr=self.params.server_lr, batch_size=64)
        for prefix, (model, layout, public) in self.models.items():
            pos = global_positions(self.global_layout, layout, prefix)
            set_flat(model, averaged[pos], layout)
            distill(model, public, teacher, spec, self.params.temperature, self.params.server_epochs,
                    self.seed + self.calls)
            out[pos] = get_flat(model, layout)
        self.calls += 1
        return out

    def _logits(self, prefix: str, vector: np.ndarray) -> torch.Tensor:
        model, layout, public = self.models[prefix]
        set_flat(model, vector, layout)
        return predict_logits(model, public)


def build_global_model(config: RunConfig, members: list[Any], strategy: Strategy) -> GlobalModel:
    """Pick the family from the strategy: logits -> soft labels, a ``sharing`` attribute ->
    shared parts, anything else -> shared weights (the foundation's path)."""
    if strategy.payload == "logits":
        return SoftLabels(config, members)
    if hasattr(strategy, "sharing"):
        return SharedParts(config, members, strategy)
    return SharedWeights(config, members)
