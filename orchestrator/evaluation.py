"""Server-side evaluation of the global model on a held-out test set.

The test set is public by construction (a benchmark's test split or a file the operator
names), so the driver may load it; private participant data never comes here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from actors.data import apply_view, load_shared_dataset, read_table
from actors.models import build_model
from actors.params import layout_of, set_flat
from actors.spec import FileData, PartitionData
from actors.training import evaluate
from orchestrator.config import Group, RunConfig
from strategies.types import Layout


class ServerEvaluator:
    """Evaluates flat global vectors with a model built like ``group``'s."""

    def __init__(self, config: RunConfig, group: Group) -> None:
        ev = config.evaluation
        data = group.data
        if ev.path is not None:
            num_classes = data.num_classes if isinstance(data, FileData) else 0
            spec = FileData(
                source="file", path=ev.path, label_column=ev.label_column,
                num_classes=num_classes or _dataset_classes(config),
                image_shape=getattr(data, "image_shape", None), view=data.view,
                feature_columns=getattr(data, "feature_columns", None),
            )
            x, y = read_table(Path(ev.path), spec, "evaluation")
            x = apply_view(x, spec.view, spec.image_shape)
            num_classes = spec.num_classes
        else:
            assert config.dataset is not None
            full = load_shared_dataset(config.dataset, _population(config))
            x, y = apply_view(full.x_test, data.view, full.image_shape), full.y_test
            num_classes = full.num_classes
        torch.manual_seed(config.seed)
        self.model = build_model(group.model.name, group.model.options, x.shape[1:], num_classes)
        self.layout: Layout = layout_of(self.model)
        self.x, self.y = torch.as_tensor(x), torch.as_tensor(y)
        self.batch_size = ev.batch_size
        self.num_examples = len(y)

    def __call__(self, params: np.ndarray, layout: Layout) -> dict[str, float]:
        set_flat(self.model, params, layout)
        return evaluate(self.model, self.x, self.y, self.batch_size)


def _dataset_classes(config: RunConfig) -> int:
    if config.dataset is not None:
        return load_shared_dataset(config.dataset, _population(config)).num_classes
    raise ValueError("evaluation.path with partitioned data needs the dataset's class count")


def _population(config: RunConfig) -> int:
    """Participants drawing on the run's dataset (a synthetic test set samples among them)."""
    return sum(g.count for g in config.groups if isinstance(g.data, PartitionData))
