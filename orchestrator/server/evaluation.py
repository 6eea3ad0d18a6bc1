"""Server-side evaluation of the global model on a held-out test set.

The test set is public by construction (a benchmark's test split, the pooled table's
held-out rows, or a file or image folder the operator names), so the driver may load it;
private participant data never comes here. The driver runs it on a pool worker of its own
node when it has one (:mod:`~orchestrator.server.evaluation_host`). A preprocessed run
applies the same fitted transform as the participants.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from actors.data.load import apply_view, load_shared_dataset
from actors.data.loaders import load_image_folder
from actors.data.tables import pooled_table, read_table, table_arrays
from actors.spec.data import FileData, FittedTransform, ImageData, PartitionData, TableColumns
from actors.training.loops import evaluate
from actors.training.models import build_model
from actors.training.params import layout_of, set_flat
from actors.training.tasks import target_array
from orchestrator.config import Group, RunConfig
from orchestrator.server.evaluation_host import EvaluatorInfo
from strategies.types import GlobalState, Layout


class ServerEvaluator:
    """Evaluates flat global vectors with a model built like ``group``'s, whose output
    size is ``num_outputs`` (classes, or regression targets)."""

    def __init__(self, config: RunConfig, group: Group, num_outputs: int,
                 transform: FittedTransform | None = None, site_features: Sequence[str] = ()) -> None:
        x, y = test_set(config, group, num_outputs, transform, site_features)
        torch.manual_seed(config.seed)
        self.model = build_model(group.model.name, group.model.options, x.shape[1:], num_outputs)
        self.layout: Layout = layout_of(self.model)
        self.task = config.task
        self.x, self.y = torch.tensor(x), torch.tensor(target_array(y, config.task))  # copies: x may be read-only
        self.batch_size = config.evaluation.batch_size
        self.num_examples = len(y)
        self.target_stds = transform.target_stds if transform is not None else []

    def info(self) -> EvaluatorInfo:
        std = float(self.y.double().std(0).max()) if len(self.y) > 1 else None
        return EvaluatorInfo(self.layout, self.num_examples, std)

    def metrics(self, params: np.ndarray, layout: Layout) -> dict[str, float]:
        set_flat(self.model, params, layout)
        return evaluate(self.model, self.x, self.y, self.task, self.batch_size, self.target_stds)

    def state_metrics(self, state: GlobalState, layout: Layout) -> dict[str, float]:
        """:meth:`metrics` of a broadcast global state's parameters (read from Ray's store
        where this runs on a pool worker: no second copy of them)."""
        return self.metrics(state.params, layout)


def test_set(config: RunConfig, group: Group, num_outputs: int, transform: FittedTransform | None,
             site_features: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """The driver's test rows in ``group``'s view. An unpreprocessed table is read with the
    sites' feature columns (``site_features``), so a column it lacks is named."""
    ev, data = config.evaluation, group.data
    classes = num_outputs if config.task.kind == "classification" else None
    if ev.path is not None and isinstance(data, ImageData):
        x, y, _ = load_image_folder(ev.path, data.image_shape, data.classes, "evaluation")
        return apply_view(x, data.view, data.image_shape), y
    if ev.path is not None:
        features = data.feature_columns if isinstance(data, FileData) else (
            config.dataset.feature_columns if config.dataset is not None else None)
        if transform is None and site_features:
            features = list(site_features)
        columns = TableColumns(label_column=ev.label_column, feature_columns=features)
        x, y = read_table(Path(ev.path), columns, "evaluation", config.task, classes, transform)
        return apply_view(x, data.view, getattr(data, "image_shape", None)), y
    assert config.dataset is not None
    if config.dataset.name == "table":
        _, test = pooled_table(config.dataset)
        columns = TableColumns(label_column=config.dataset.label_column,
                               feature_columns=config.dataset.feature_columns)
        x, y, _, _ = table_arrays(test, columns, config.task, classes, transform,
                                  f"evaluation: {config.dataset.path} test split")
        return x, y
    full = load_shared_dataset(config.dataset, _population(config))
    return apply_view(full.x_test, data.view, full.image_shape), full.y_test


def _population(config: RunConfig) -> int:
    """Participants drawing on the run's dataset (a synthetic test set samples among them)."""
    return sum(g.count for g in config.groups if isinstance(g.data, PartitionData))
