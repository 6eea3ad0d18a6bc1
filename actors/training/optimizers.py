"""The local optimizers, SGD and Adam, computed as ``torch.optim`` computes them on the CPU.

Building a first ``torch.optim`` optimizer imports ``torch._dynamo`` (its methods are wrapped
to keep the compiler out of them): well over a second of every worker's start-up on a
laptop, for a compiler local training never uses. These classes follow torch's
single-tensor update operation for operation, so a model trains to the same bits
(``tests/test_local_training.py`` compares them with ``torch.optim``). DP-SGD keeps
``torch.optim``'s (:func:`torch_optimizer`): opacus wraps that class.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from actors.spec.training import TrainSpec

ADAM_BETAS = (0.9, 0.999)
"""``torch.optim.Adam``'s default betas, which Adam here and batched training use."""
ADAM_EPS = 1e-8


class LocalOptimizer:
    """What local training asks of an optimizer: ``zero_grad`` and ``step``."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, weight_decay: float) -> None:
        self.params = list(params)
        self.lr, self.weight_decay = lr, weight_decay

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    def _gradients(self) -> Iterable[tuple[int, torch.Tensor, torch.Tensor]]:
        """Each parameter with a gradient, the gradient with L2 weight decay added."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            yield i, p, g

    def step(self) -> None:
        raise NotImplementedError


class SGD(LocalOptimizer):
    """``torch.optim.SGD`` without dampening, Nesterov or maximize."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, weight_decay)
        self.momentum = momentum
        self.buffers: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def step(self) -> None:
        for i, p, g in self._gradients():
            if self.momentum != 0:
                buf = self.buffers.get(i)
                if buf is None:
                    buf = self.buffers[i] = g.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(g)
                g = buf
            p.add_(g, alpha=-self.lr)


class Adam(LocalOptimizer):
    """``torch.optim.Adam`` with its default betas and eps and L2 weight decay."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, weight_decay)
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor, list[int]]] = {}

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = ADAM_BETAS
        for i, p, g in self._gradients():
            if i not in self.state:
                self.state[i] = (torch.zeros_like(p), torch.zeros_like(p), [0])
            exp_avg, exp_avg_sq, count = self.state[i]
            count[0] += 1
            exp_avg.lerp_(g, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            step_size = self.lr / (1 - beta1 ** count[0])
            denom = (exp_avg_sq.sqrt() / (1 - beta2 ** count[0]) ** 0.5).add_(ADAM_EPS)
            p.addcdiv_(exp_avg, denom, value=-step_size)


def _trainable(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(model: nn.Module, spec: TrainSpec) -> LocalOptimizer:
    """The optimizer ``spec`` names, over the model's trainable parameters."""
    if spec.optimizer == "adam":
        return Adam(_trainable(model), lr=spec.lr, weight_decay=spec.weight_decay)
    return SGD(_trainable(model), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def torch_optimizer(model: nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    """The same optimizer as ``torch.optim``'s class, for opacus's DP-SGD wrapper."""
    if spec.optimizer == "adam":
        return torch.optim.Adam(_trainable(model), lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(_trainable(model), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
