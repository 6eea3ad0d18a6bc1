"""Models the server half of a strategy can run: one per architecture family.

FedDF distills the ensemble of received models into each family's averaged model on the
public set. *What* to distill is the strategy's business (``strategies/distillation.py``);
running the networks is this module's, which implements
:class:`strategies.base.ServerModels`. The public set is public by construction, so the
driver may load it; private participant data never comes here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from actors.spec.data import DatasetSpec
from actors.spec.participant import ParticipantSpec
from actors.spec.training import TrainSpec
from actors.training.distillation import distill, load_public_set, predict_logits
from actors.training.models import build_model
from actors.training.params import get_flat, layout_of, set_flat
from strategies.types import Layout


class FamilyModels:
    """One rebuilt model per family prefix, each seeing the public set in its own view."""

    def __init__(self, dataset: DatasetSpec, families: Sequence[tuple[str, ParticipantSpec, Layout, int]],
                 seed: int) -> None:
        torch.manual_seed(seed)
        self._models: dict[str, tuple[torch.nn.Module, Layout, torch.Tensor]] = {}
        for prefix, spec, layout, num_classes in families:
            public = torch.as_tensor(load_public_set(dataset, spec.data.view))
            model = build_model(spec.model.name, spec.model.options, tuple(public.shape[1:]), num_classes)
            if layout_of(model) != layout:
                raise ValueError(f"cannot rebuild {spec.name}'s model on the server: its layout differs")
            self._models[prefix] = (model, layout, public)
        self.prefixes = tuple(self._models)

    def layout(self, prefix: str) -> Layout:
        return self._models[prefix][1]

    def logits(self, prefix: str, vector: np.ndarray) -> np.ndarray:
        model, layout, public = self._models[prefix]
        set_flat(model, vector, layout)
        return predict_logits(model, public).numpy()

    def distill(self, prefix: str, vector: np.ndarray, teacher: np.ndarray, temperature: float,
                epochs: int, lr: float, seed: int) -> np.ndarray:
        model, layout, public = self._models[prefix]
        set_flat(model, vector, layout)
        spec = TrainSpec(optimizer="adam", lr=lr, batch_size=64)
        distill(model, public, torch.as_tensor(teacher), spec, temperature, epochs, seed)
        return get_flat(model, layout)
