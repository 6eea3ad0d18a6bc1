"""Local DP-SGD: a participant's training with per-example clipping and Gaussian noise.

Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, via Opacus
(``GradSampleModule`` for per-example gradients, ``DPOptimizer`` for clip + noise). Unlike
the driver's DP-FedAvg (``strategies/privacy.py``), the noise is added *inside* the silo, so
the update is already differentially private when it leaves: the silo need not trust the
driver, the network, or the other participants.

What the guarantee rests on, and why the loop looks the way it does:

- Poisson sampling: each step includes every local example independently with
  probability ``q = batch_size / N``. That is the subsampled Gaussian mechanism the RDP
  accountant analyses; shuffled fixed-size batches are not. A step whose sample is empty
  still takes a noise-only step, exactly the mechanism accounted for (skipping it would
  reveal that the sample was empty, which the accountant does not cover).
- Secret randomness: the sampling and the noise come from a generator seeded from the
  operating system, never from the task seed the driver sends (whoever knows the seed can
  regenerate the noise and subtract it). DP-SGD runs are therefore not bit-reproducible.
- ``secure_mode`` noise (Opacus' sum of Gaussians) hardens the noise against attacks on
  its floating-point low bits; four normal draws per parameter per step are cheap next to
  the per-example gradients. (The generator itself is torch's, not a cryptographic one.)
- The model is wrapped in a ``GradSampleModule`` only for the duration of one task, and the
  hooks and per-parameter attributes are removed afterwards: the participant's ``model``
  keeps its own parameter names (no ``_module.`` prefix) for ``get_flat``/``set_flat``, and
  evaluation and other payload paths never run through per-example hooks.
- FedProx's proximal gradient ``mu * (w - w_global)`` depends only on the current and the
  global weights, not on any example, so adding it after the noise is post-processing.

Steps per task are what non-private training would do (``local_steps`` if given, else
``ceil(N / batch_size) * epochs``), so a DP-SGD participant does the same amount of work.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from actors.spec.training import DPSGD, TrainSpec
from actors.training.optimizers import torch_optimizer
from strategies.privacy import PrivacyAccountant, PrivacyBudgetSpent


def unsupported_modules(model: nn.Module) -> list[str]:
    """``name (Type)`` of every trainable module Opacus cannot give per-example gradients."""
    from opacus.grad_sample import GradSampleModule
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    was_training = model.training
    model.train()  # the validator also refuses a model in eval mode; that is not the question
    try:
        if not ModuleValidator.validate(model, strict=False) and not GradSampleModule.validate(model, strict=False):
            return []
        bad = []
        for name, module in trainable_modules(model):
            validator = ModuleValidator.VALIDATORS.get(type(module))
            has_buffers = next(module.buffers(recurse=False), None) is not None  # BatchNorm's stats
            if (validator is not None and validator(module)) or has_buffers:
                bad.append(f"{name or '<root>'} ({type(module).__name__})")
        return bad or ["<model> (see opacus.validators.ModuleValidator.validate)"]
    finally:
        model.train(was_training)


def check_supported(model: nn.Module, participant: str, model_name: str) -> None:
    """Refuse, at start-up, a model whose per-example gradients Opacus cannot compute.

    >>> from actors.training.models import build_model
    >>> check_supported(build_model("mlp", {}, (64,), 10), "site-0", "mlp")  # fine: returns None
    """
    bad = unsupported_modules(model)
    if bad:
        raise ValueError(
            f"participant {participant}: model {model_name!r} cannot train with train.dp_sgd: "
            f"Opacus cannot compute per-example gradients of {', '.join(bad)}. Use a model built "
            "from supported layers (mlp, cnn; or a factory using opacus.layers.DPLSTM, DPGRU, "
            "DPMultiheadAttention instead of torch's)"
        )


def num_steps(n: int, batch_size: int, epochs: int, steps: int | None) -> int:
    """As many steps as non-private training takes (``actors.training.loops.batches``)."""
    return steps if steps is not None else math.ceil(n / batch_size) * epochs


def sample_rate(n: int, batch_size: int) -> float:
    """Poisson sampling probability of each example: ``batch_size / n`` examples per step."""
    return min(1.0, batch_size / n)


def secret_generator(device: torch.device) -> torch.Generator:
    """A generator the driver cannot reproduce: seeded from the operating system."""
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


def poisson_batch(n: int, rate: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Indices of a Poisson sample: each of ``n`` examples independently with ``rate``."""
    return (torch.rand(n, generator=generator, device=device) < rate).nonzero().squeeze(1)


def check_budget(
    accountant: PrivacyAccountant, dp: DPSGD, n: int, spec: TrainSpec, epochs: int, steps: int | None, who: str
) -> None:
    """Refuse *before* training when this task's steps would overspend the silo's budget,
    so the budget is never exceeded, not just noticed afterwards."""
    if dp.max_epsilon is None or n == 0:
        return
    after = PrivacyAccountant(accountant.noise_multiplier, accountant.delta, list(accountant.history))
    after.step(sample_rate(n, spec.batch_size), steps=num_steps(n, spec.batch_size, epochs, steps))
    if after.epsilon() > dp.max_epsilon:
        raise PrivacyBudgetSpent(
            f"participant {who}: privacy budget spent (epsilon {accountant.epsilon():.3g} now, "
            f"{after.epsilon():.3g} after this task > max_epsilon {dp.max_epsilon:g})"
        )


def _attach_proximal(opt: Any, mu: float) -> None:
    """FedProx's pull towards the start point, added after clipping and noise (it depends
    on no example, so it costs no privacy)."""
    anchor = [p.detach().clone() for p in opt.params]

    def proximal(optimizer: Any) -> None:  # runs after clip + noise, before the step
        for p, a in zip(optimizer.params, anchor):
            p.grad.add_(p.detach() - a, alpha=mu)

    opt.attach_step_hook(proximal)


def train_dp_sgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: TrainSpec,
    accountant: PrivacyAccountant,
    epochs: int,
    steps: int | None = None,
    proximal_mu: float = 0.0,
    generator: torch.Generator | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> dict[str, float]:
    """DP-SGD over Poisson-sampled local batches; records the steps in ``accountant``.

    Returns the mean loss over the examples sampled, the number of examples sampled, the
    steps taken and the accountant's epsilon so far (``dp_sgd_epsilon``). ``generator``
    is for tests; by default the randomness is secret (see the module docstring).
    """
    from opacus.grad_sample import GradSampleModule
    from opacus.optimizers import DPOptimizer

    dp: DPSGD | None = spec.dp_sgd
    if dp is None:
        raise ValueError("train_dp_sgd needs spec.dp_sgd")
    n = len(y)
    if n == 0:
        return {"train_loss": float("nan"), "samples": 0.0, "steps": 0.0, "dp_sgd_steps": 0.0,
                "dp_sgd_epsilon": accountant.epsilon()}
    total_steps = num_steps(n, spec.batch_size, epochs, steps)
    rate = sample_rate(n, spec.batch_size)
    gen = generator if generator is not None else secret_generator(x.device)
    model.train()
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
    opt = DPOptimizer(
        torch_optimizer(model, spec), noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm, expected_batch_size=spec.batch_size,
        loss_reduction="mean", generator=gen, secure_mode=True,
    )
    if proximal_mu > 0:
        _attach_proximal(opt, proximal_mu)
    total, seen = 0.0, 0
    try:
        with warnings.catch_warnings():  # torch warns at every backward that the first
            # layer's input needs no gradient: true, and harmless for per-example hooks
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            for _ in range(total_steps):
                idx = poisson_batch(n, rate, gen, x.device)
                total += _dp_step(gsm, opt, x, y, idx, loss_fn)
                seen += len(idx)
    finally:
        opt.zero_grad(set_to_none=True)
        gsm._close()  # remove hooks and Opacus' attributes: the raw model is what stays
        for p in model.parameters():
            if hasattr(p, "summed_grad"):
                del p.summed_grad
    accountant.step(rate, steps=total_steps)
    return {"train_loss": total / max(seen, 1), "samples": float(seen), "steps": float(total_steps),
            "dp_sgd_steps": float(total_steps), "dp_sgd_epsilon": accountant.epsilon()}


def _dp_step(gsm: Any, opt: Any, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
    """One clipped, noised step on the sampled batch ``idx``; returns its summed loss.
    An empty sample still takes a noise-only step: no per-example gradient, noise added."""
    opt.zero_grad(set_to_none=True)
    total = 0.0
    if len(idx) == 0:
        for p in opt.params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
    else:
        loss = loss_fn(gsm(x[idx]), y[idx])
        loss.backward()
        total = float(loss.detach()) * len(idx)
    opt.step()
    return total
