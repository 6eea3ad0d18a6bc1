"""Knowledge distillation on the participant side: the loss, the public set, the loops.

Soft-label strategies (FedMD, DS-FL) exchange predictions on a shared unlabelled public
set instead of weights. Each participant loads that set itself, in its own view (a CNN
sees 8x8 images, a GRU sees 8 rows), distills the server's consensus into its model and
predicts the set for the next consensus. FedDF's server uses the same loss and loops.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from actors.data.load import apply_view, load_shared_dataset
from actors.spec.data import DatasetSpec, View
from actors.spec.training import TrainSpec
from actors.training.loops import batches
from actors.training.optimizers import LocalOptimizer, make_optimizer


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, mean over examples.

    The ``T**2`` factor (Hinton et al., 2015) keeps gradient magnitudes independent of
    the temperature, so ``T`` can change without retuning the learning rate.
    """
    t = float(temperature)
    log_student = F.log_softmax(student_logits / t, dim=-1)
    log_teacher = F.log_softmax(teacher_logits / t, dim=-1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * t * t


def load_public_set(dataset: DatasetSpec, view: View) -> np.ndarray:
    """The dataset's held-out public slice (``dataset.public_size`` examples), in ``view``.

    Every process computes the same slice from the same seed, so the public set never
    travels; only predictions on it do.
    """
    full = load_shared_dataset(dataset)
    if full.x_public is None or len(full.x_public) == 0:
        raise ValueError(
            "soft-label strategies need a public set: set dataset.public_size (e.g. 200)"
        )
    return apply_view(full.x_public, view, full.image_shape)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The model's logits on ``x``, in eval mode."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def distill(
    model: nn.Module,
    x_public: torch.Tensor,
    teacher_logits: torch.Tensor,
    spec: TrainSpec,
    temperature: float,
    epochs: int,
    seed: int,
    optimizer: LocalOptimizer | None = None,
) -> float:
    """Fit ``model`` to the teacher's soft labels on the public set; returns the mean loss."""
    if epochs <= 0 or len(x_public) == 0:
        return 0.0
    model.train()
    opt = optimizer or make_optimizer(model, spec)
    gen = torch.Generator().manual_seed(seed)
    total, seen = 0.0, 0
    for idx in batches(len(x_public), spec.batch_size, gen, None, epochs):
        opt.zero_grad(set_to_none=True)
        loss = kd_loss(model(x_public[idx]), teacher_logits[idx], temperature)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


def consensus_term(x_public: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                   weight: float, seed: int):
    """An ``extra_loss`` for :func:`~actors.training.loops.train_locally`: ``weight`` times the KD
    loss on a random public batch as large as the private one, so that private training
    keeps the consensus in view instead of overwriting it."""
    gen = torch.Generator().manual_seed(seed)

    def term(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        j = torch.randint(len(x_public), (len(idx),), generator=gen)
        return weight * kd_loss(model(x_public[j]), teacher_logits[j], temperature)

    return term
