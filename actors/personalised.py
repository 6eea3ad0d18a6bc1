"""Participant-side pieces for runs without one global model (heterogeneous architectures).

- Partial sharing: load only the shared part of the global state into the local model
  (matched by name and shape, see ``strategies/partial.py``); personal parameters stay
  as the last task left them and never leave the actor.
- FedRep's alternating local update: head first with the body frozen, then the body.
- Personal evaluation: each participant evaluates its own model on the run's shared test
  split, seen in its own view, because there is no single global model the server could.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from actors.data import LocalData, apply_view, load_shared_dataset
from actors.params import get_flat, set_flat
from actors.spec import ParticipantSpec, TrainSpec
from actors.training import train_locally
from strategies.partial import Sharing, family_prefix, global_positions, shared_names
from strategies.types import GlobalState, Layout


def shared_part(layout: Layout, sharing: Sharing) -> Layout:
    """The sub-layout a participant sends under ``sharing``; the rest is personal."""
    return layout.subset(shared_names(layout, sharing))


def load_shared(model: nn.Module, layout: Layout, sharing: Sharing, state: GlobalState) -> tuple[Layout, np.ndarray]:
    """Copy the shared part of ``state`` into ``model``; return that part's layout and values.

    The first task of a participant that joins late is exactly this: a warm start of its
    shared part from whatever the others have learnt so far.
    """
    part = shared_part(layout, sharing)
    if not part.names:
        return part, np.zeros(0, np.float32)
    prefix = family_prefix(state.layout, layout) if any("/" in n for n in state.layout.names) else ""
    values = np.array(state.params[global_positions(state.layout, part, prefix)], dtype=np.float32)
    set_flat(model, values, part)
    return part, values


def shared_delta(model: nn.Module, part: Layout, start: np.ndarray) -> np.ndarray:
    """The shared parameters' change since ``start`` (empty when nothing is shared)."""
    if not part.names:
        return np.zeros(0, np.float32)
    return get_flat(model, part) - start


def train_fedrep(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: TrainSpec, seed: int,
    head_epochs: int, body_epochs: int, steps: int | None = None,
) -> dict[str, float]:
    """FedRep: fit the head with the body frozen, then the body with the head frozen."""
    metrics: dict[str, float] = {}
    samples = 0.0
    for part, epochs, part_seed in (("head", head_epochs, seed), ("body", body_epochs, seed + 1)):
        frozen = [p for n, p in model.named_parameters() if not n.startswith(f"{part}.")]
        for p in frozen:
            p.requires_grad_(False)
        try:
            out = train_locally(model, x, y, spec, part_seed, epochs=epochs, steps=steps)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        metrics[f"{part}_loss"] = out["train_loss"]
        samples += out["samples"]
    return {"train_loss": metrics["body_loss"], "head_loss": metrics["head_loss"], "samples": samples}


def test_split(spec: ParticipantSpec, data: LocalData) -> tuple[np.ndarray, np.ndarray]:
    """The test data this participant evaluates its own model on, in its own view:
    its file's held-out rows if it has any, else the run dataset's shared test split."""
    if len(data.y_test) or spec.dataset is None:
        return data.x_test, data.y_test
    full = load_shared_dataset(spec.dataset)
    return apply_view(full.x_test, spec.data.view, full.image_shape), full.y_test
