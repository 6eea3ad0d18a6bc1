"""Local training and evaluation loops, plain PyTorch (no Ray), shared by participants
and the driver's evaluator."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from actors.spec.training import TaskSpec, TrainSpec
from actors.training.optimizers import make_optimizer
from actors.training.tasks import Loss, metrics


def precision(spec: TrainSpec, device: torch.device) -> torch.autocast:
    """The forward pass's autocast: bfloat16 under ``precision: bf16``, else off."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.precision == "bf16")


def batches(n: int, batch_size: int, generator: torch.Generator, steps: int | None, epochs: int,
            device: torch.device | None = None):
    """Index batches: ``epochs`` shuffled passes, or exactly ``steps`` batches if given.
    The order is drawn on the CPU (the same for any device) and, with ``device``, moved
    there once per pass rather than once per batch."""
    done = 0
    epoch = 0
    while True:
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            if steps is not None and done >= steps:
                return
            yield order[start : start + batch_size]
            done += 1
        epoch += 1
        if steps is None and epoch >= epochs:
            return


TASK_RNG_STREAM = 0x6D61736B
"""Mixed with a task's seed for torch's global generators, so dropout masks are not drawn
from the same stream as the batch order (which a generator seeded with the seed itself draws)."""


@contextlib.contextmanager
def task_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's global generators (dropout masks, any ``torch.rand*`` without a generator)
    seeded from the task's seed for the duration, then put back as they were. A
    participant's training then depends on its task alone, not on which process served
    it or what that process ran before: pooled hosting gives what dedicated gives."""
    derived = int(np.random.SeedSequence((seed % 2**64, TASK_RNG_STREAM)).generate_state(1, np.uint64)[0])
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(derived)
        for d in cuda:
            with torch.cuda.device(d):
                torch.cuda.manual_seed(derived)
        yield


def train_locally(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: TrainSpec,
    seed: int,
    epochs: int,
    steps: int | None = None,
    proximal: tuple[float, Mapping[str, torch.Tensor]] | None = None,
    gradient_offset: Mapping[str, torch.Tensor] | None = None,
    extra_loss=None,
    loss_fn: Loss = F.cross_entropy,
) -> dict[str, float]:
    """SGD/Adam over local batches; returns the mean loss, samples seen and steps taken.

    The client half's loss terms arrive here as tensors keyed by parameter name (a frozen
    layer of the user's model has none, so position would pair the wrong ones):
    ``proximal = (mu, anchor)`` adds ``mu/2 * ||w - anchor||^2`` (FedProx, Ditto);
    ``gradient_offset`` is added to every gradient, the gradient of a linear term
    (SCAFFOLD's ``c - c_i``); ``extra_loss(model, idx)`` is any other term (a consensus
    KD loss). ``loss_fn`` is the task's loss (:mod:`actors.training.tasks`). Frozen parameters
    (``requires_grad`` off) are left out of the optimizer and of both terms. Dropout draws
    from generators seeded by ``seed`` (:func:`task_rng`).
    """
    model.train()
    opt = make_optimizer(model, spec)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(seed)
    losses, sizes = [], []  # summed once at the end: a float() per step would wait for the card
    with task_rng(seed, x.device):
        for idx in batches(len(y), spec.batch_size, gen, steps, epochs, x.device):
            xb, yb = x[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            with precision(spec, x.device):
                loss = loss_fn(model(xb).float(), yb)
            if extra_loss is not None:
                loss = loss + extra_loss(model, idx)
            if proximal is not None:
                mu, anchor = proximal
                loss = loss + 0.5 * mu * sum(((p - anchor[n]) ** 2).sum() for n, p in trainable)
            loss.backward()
            if gradient_offset is not None:
                for n, p in trainable:
                    p.grad.add_(gradient_offset[n])
            opt.step()
            losses.append(loss.detach())
            sizes.append(len(idx))
    seen = sum(sizes)
    total = float(torch.stack(losses).double().cpu() @ torch.tensor(sizes, dtype=torch.float64)) if losses else 0.0
    return {"train_loss": total / max(seen, 1), "samples": float(seen), "steps": float(len(sizes))}


def local_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int,
                   loss_fn: Loss = F.cross_entropy) -> float:
    """Accumulate the mean-loss gradient over one shuffled batch (FedSGD's payload)."""
    model.train()
    model.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(y), generator=gen)[:batch_size]
    with task_rng(seed, x.device):
        loss = loss_fn(model(x[idx]), y[idx])
    loss.backward()
    return float(loss.detach())


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: TaskSpec,
             batch_size: int = 1024, target_stds: Sequence[float] = ()) -> dict[str, float]:
    """The task's metrics (:func:`actors.training.tasks.metrics`) on the whole set; empty data
    gives NaN metrics, not an error."""
    model.eval()
    outputs = [model(x[start : start + batch_size]) for start in range(0, len(y), batch_size)]
    return metrics(torch.cat(outputs) if outputs else torch.zeros(0), y, task, target_stds)


def to_tensors(x: np.ndarray, y: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)
