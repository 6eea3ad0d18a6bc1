"""Several same-architecture participants trained as one batched computation.

A pool worker that hosts K small participants on one GPU would otherwise launch K
models' kernels one after another, each too small to fill the card. Here each
parameter is stacked across the K models, ``torch.func.vmap`` runs all K forward passes
as one and autograd all K backward passes, so K participants cost about one participant's kernel
launches. Each participant keeps its own batches (the exact index sequence
:func:`actors.training.loops.batches` gives it under its seed), its own optimizer state and
its own example count, so the result equals :func:`actors.training.loops.train_locally` run
on each participant in turn, to float tolerance.

Only plain local training is batched: no DP-SGD, no client-half loss terms
(proximal, gradient offsets, extra losses); such participants train serially.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from actors.spec.training import TrainSpec
from actors.training.loops import batches
from actors.training.optimizers import ADAM_BETAS, ADAM_EPS

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

OPTIMIZER_FIELDS = ("optimizer", "lr", "momentum", "weight_decay", "batch_size")
"""The :class:`TrainSpec` fields the batched optimizer shares across participants."""

def _structure(model: nn.Module) -> tuple:
    """What must be equal for one model to stand in for another in ``functional_call``:
    the parameters' names, shapes, dtypes, devices and trainability, and the modules'
    repr (their types and settings, e.g. an activation's slope)."""
    params = tuple(
        (n, tuple(p.shape), p.dtype, p.device, p.requires_grad) for n, p in model.named_parameters()
    )
    return params, repr(model)


def _module_reason(model: nn.Module) -> str | None:
    """Why one model cannot be vmapped to match serial training, or None."""
    buffers = [n for n, _ in model.named_buffers()]
    if buffers:
        return (f"the model has buffers ({', '.join(buffers[:3])}), e.g. BatchNorm running "
                "statistics, which batched training does not update")
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return (f"dropout in train mode ({name or 'model'}, p={module.p}): batched training "
                    "cannot draw the same random masks as serial training")
    if not any(p.requires_grad for p in model.parameters()):
        return "the model has no trainable parameters"
    return None


def can_batch(models: Sequence[nn.Module], specs: Sequence[TrainSpec]) -> str | None:
    """None when these participants can train together with :func:`train_batched`,
    else why not, in words (so a pool can log why it fell back to serial training)."""
    if not models or len(models) != len(specs):
        return f"needs one spec per model ({len(models)} models, {len(specs)} specs)"
    reason = _module_reason(models[0])
    if reason is not None:
        return reason
    first = _structure(models[0])
    for i, model in enumerate(models[1:], start=1):
        if _structure(model) != first:
            return (f"model {i} has a different architecture from model 0 (parameter names, "
                    "shapes, dtypes, devices, trainable flags or modules differ)")
    for i, spec in enumerate(specs):
        if spec.dp_sgd is not None:
            return f"spec {i} trains with dp_sgd (per-example clipping and noise run serially)"
        for name in OPTIMIZER_FIELDS:
            if getattr(spec, name) != getattr(specs[0], name):
                return (f"different optimizer settings: spec {i} has {name}={getattr(spec, name)!r}, "
                        f"spec 0 has {name}={getattr(specs[0], name)!r}")
    return None


@dataclass
class _Stack:
    """The K participants' trainable parameters and optimizer state, stacked on dim 0."""

    params: dict[str, torch.Tensor]
    frozen: dict[str, torch.Tensor]
    state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)


def _stack(models: Sequence[nn.Module]) -> _Stack:
    """Copy every parameter of the K models into one (K, ...) tensor per name; frozen
    ones too (they may differ per participant), kept apart from the optimizer's."""
    named = [dict(m.named_parameters()) for m in models]
    trainable = {n: torch.stack([d[n].detach() for d in named]) for n, p in named[0].items() if p.requires_grad}
    frozen = {n: torch.stack([d[n].detach() for d in named]) for n, p in named[0].items() if not p.requires_grad}
    return _Stack(trainable, frozen, steps=[0] * len(models))


def _per_participant(values: list, k: int, what: str) -> list:
    if len(values) != k:
        raise ValueError(f"{what}: {len(values)} values for {k} participants")
    return values


def _concat(xs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """All participants' rows in one tensor, and where each one's rows start, so one
    gather per step fetches every participant's batch."""
    shapes = {(tuple(x.shape[1:]), x.dtype, x.device) for x in xs}
    if len(shapes) > 1:
        raise ValueError(f"participants' data differ in row shape, dtype or device: {sorted(map(str, shapes))}")
    offsets, start = [], 0
    for x in xs:
        offsets.append(start)
        start += len(x)
    return torch.cat(list(xs)), offsets


def _draw(iters: dict[int, Iterator[torch.Tensor]]) -> dict[int, list[tuple[int, torch.Tensor]]]:
    """Every unfinished participant's next batch, grouped by batch length (so a short
    last batch is its own group and its mean loss is over its real rows only);
    finished participants leave ``iters``."""
    groups: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for i in list(iters):
        idx = next(iters[i], None)
        if idx is None:
            del iters[i]
        else:
            groups.setdefault(len(idx), []).append((i, idx))
    return groups


def _batched_grad(template: nn.Module, loss_fn: Loss) -> Callable:
    """Every participant's mean batch loss and its gradient. ``vmap`` runs the K forward
    passes as one and ordinary autograd differentiates the sum of the K losses: each
    participant's loss depends on its own row of the stack only, so the sum's gradient
    holds every participant's own gradient. ``torch.func.grad`` would give the same
    numbers, but its first call imports ``torch._dynamo`` (1.2-1.5 s on a 2-core laptop).
    ``randomness="error"`` (vmap's default) makes any random op fail loudly instead of
    silently diverging from serial training."""
    loss_fn = _cross_entropy if loss_fn is F.cross_entropy else loss_fn

    def one(params: dict, frozen: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(template, {**params, **frozen}, (x,)), y)

    forward = vmap(one)

    def grad_and_losses(params: dict, frozen: dict, x: torch.Tensor, y: torch.Tensor) -> tuple[dict, torch.Tensor]:
        leaves = {n: p.detach().requires_grad_() for n, p in params.items()}  # the stack is stepped in place
        with torch.enable_grad():
            losses = forward(leaves, frozen, x, y)
            grads = torch.autograd.grad(losses.sum(), list(leaves.values()), allow_unused=True)
        return ({n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(leaves.items(), grads)},
                losses.detach())

    return grad_and_losses


def _cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy`` of class indices (mean over the batch) as a log-softmax and a
    gather. Under vmap ``F.cross_entropy`` runs nll_loss's Python decomposition, whose
    shape check imports sympy: 0.4-0.5 s at the first batched step in a process, against
    ~20 ms for this."""
    return -F.log_softmax(out, dim=1).gather(1, y.unsqueeze(1)).mean()


def _sgd(params: dict, grads: dict, state: dict, spec: TrainSpec) -> None:
    """``torch.optim.SGD`` (no dampening, no Nesterov) on every stacked row at once.
    A zero momentum buffer times momentum plus the gradient is the gradient, which is
    exactly torch's first step (it clones the gradient)."""
    for name, p in params.items():
        g = grads[name]
        if spec.momentum != 0:
            buf = state.setdefault("momentum_buffer", {}).setdefault(name, torch.zeros_like(p))
            g = buf.mul_(spec.momentum).add_(g)
        p.add_(g, alpha=-spec.lr)


def _adam(params: dict, grads: dict, state: dict, factors: torch.Tensor) -> None:
    """``torch.optim.Adam`` (default betas and eps, L2 weight decay) on every stacked
    row; ``factors`` holds each row's step size and bias correction for its own step
    count (:func:`_adam_factors`)."""
    beta1, beta2 = ADAM_BETAS
    first = next(iter(params.values()))
    step_sizes, bias2_sqrts = factors.to(first.dtype)
    for name, p in params.items():
        g = grads[name]
        exp_avg = state.setdefault("exp_avg", {}).setdefault(name, torch.zeros_like(p))
        exp_avg_sq = state.setdefault("exp_avg_sq", {}).setdefault(name, torch.zeros_like(p))
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        shape = (-1, *([1] * (p.dim() - 1)))
        denom = (exp_avg_sq.sqrt() / bias2_sqrts.view(shape)).add_(ADAM_EPS)
        p.sub_(step_sizes.view(shape) * exp_avg / denom)


def _adam_factors(lr: float, counts: list[int]) -> list[list[float]]:
    """Adam's step size and second-moment bias correction for each row's step count,
    in float64 as torch computes them from Python floats."""
    beta1, beta2 = ADAM_BETAS
    return [[lr / (1 - beta1**c) for c in counts], [(1 - beta2**c) ** 0.5 for c in counts]]


@dataclass
class _Planned:
    """One optimizer step: the participants in it (all with batches of ``length``
    rows), and, once uploaded, their rows and indices on the device."""

    members: list[int]
    length: int
    rows: list[torch.Tensor]
    adam: list[list[float]] | None = None
    on_device: dict[str, torch.Tensor] = field(default_factory=dict)


STEPS_PER_UPLOAD = 64
"""Steps planned and copied to the device at once: every step's row indices in one copy,
instead of a copy per step that would make the host wait for the card each step."""


def _plan(iters: dict[int, Iterator[torch.Tensor]], counts: list[int], spec: TrainSpec) -> list[_Planned]:
    """The next steps, at most :data:`STEPS_PER_UPLOAD`, in the order serial training
    takes them; ``counts`` (each participant's steps so far) advances as they are planned."""
    planned: list[_Planned] = []
    while len(planned) < STEPS_PER_UPLOAD and (groups := _draw(iters)):
        for length, group in groups.items():
            members = [i for i, _ in group]
            for i in members:
                counts[i] += 1
            adam = _adam_factors(spec.lr, [counts[i] for i in members]) if spec.optimizer == "adam" else None
            planned.append(_Planned(members, length, [idx for _, idx in group], adam))
    return planned


def _upload(planned: list[_Planned], offsets: list[int], device: torch.device) -> None:
    """Every planned step's row indices and members in one host-to-device copy (its Adam
    factors, a column per member, in a second), sliced per step on the device."""
    rows = [torch.stack([idx + offsets[i] for i, idx in zip(p.members, p.rows)]).reshape(-1) for p in planned]
    ints = torch.cat([*rows, torch.tensor([i for p in planned for i in p.members])]).to(device)
    adam = None if planned[0].adam is None else torch.cat(
        [torch.tensor(p.adam, dtype=torch.float64) for p in planned], dim=1).to(device)
    at, member = 0, 0  # where the step's rows start in ints, and its first member's position
    members = ints[sum(len(r) for r in rows):]
    for p in planned:
        g = len(p.members)
        p.on_device["rows"] = ints[at:at + g * p.length].view(g, p.length)
        p.on_device["members"] = members[member:member + g]
        if adam is not None:
            p.on_device["adam"] = adam[:, member:member + g]
        at, member = at + g * p.length, member + g


def _step(stack: _Stack, planned: _Planned, data: tuple, grad_fn: Callable, spec: TrainSpec) -> torch.Tensor:
    """One optimizer step for the participants ``planned`` (same batch length): gather
    their rows of the stack (all of it when every participant is in), step, scatter back.
    Returns their batch losses, left on the device."""
    x_all, y_all = data
    rows, sel = planned.on_device["rows"], planned.on_device["members"]
    everyone = planned.members == list(range(len(stack.steps)))

    def pick(tensors: dict) -> dict:
        return tensors if everyone else {n: v.index_select(0, sel) for n, v in tensors.items()}

    params, frozen = pick(stack.params), pick(stack.frozen)
    state = stack.state if everyone else {kind: pick(t) for kind, t in stack.state.items()}
    grads, losses = grad_fn(params, frozen, x_all[rows], y_all[rows])
    with torch.no_grad():
        if spec.weight_decay != 0:  # L2, as torch's SGD and Adam add it to the gradient
            grads = {n: g.add(params[n], alpha=spec.weight_decay) for n, g in grads.items()}
        if spec.optimizer == "adam":
            _adam(params, grads, state, planned.on_device["adam"])
        else:
            _sgd(params, grads, state, spec)
    if not everyone:
        for name, value in params.items():
            stack.params[name].index_copy_(0, sel, value)
        for kind, tensors in state.items():
            full = stack.state.setdefault(kind, {})
            for name, value in tensors.items():
                full.setdefault(name, torch.zeros_like(stack.params[name])).index_copy_(0, sel, value)
    return losses.detach()


def train_batched(
    models: Sequence[nn.Module],
    xs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    spec: TrainSpec,
    seeds: Sequence[int],
    epochs: int | Sequence[int],
    steps: int | None | Sequence[int | None] = None,
    loss_fn: Loss = F.cross_entropy,
) -> list[dict[str, float]]:
    """Train K participants in lockstep as one vmapped computation; each model ends with
    the parameters :func:`actors.training.loops.train_locally` would give it alone with its
    seed, and each gets the same ``{"train_loss", "samples", "steps"}`` back.

    ``epochs`` and ``steps`` may be one value for all or one per participant: a
    participant that runs out of batches simply stops stepping. Check :func:`can_batch`
    first; ``loss_fn(output, target)`` must return the batch's mean loss.
    """
    k = len(models)
    seeds = _per_participant(list(seeds), k, "seeds")
    epochs_of = _per_participant(list(epochs), k, "epochs") if isinstance(epochs, Sequence) else [epochs] * k
    steps_of = _per_participant(list(steps), k, "steps") if isinstance(steps, Sequence) else [steps] * k
    xs, ys = _per_participant(list(xs), k, "xs"), _per_participant(list(ys), k, "ys")
    for model in models:
        model.train()
    stack = _stack(models)
    x_all, offsets = _concat(xs)
    data = (x_all, torch.cat(list(ys)).to(x_all.device))
    grad_fn = _batched_grad(models[0], loss_fn)
    iters = {i: batches(len(ys[i]), spec.batch_size, torch.Generator().manual_seed(seeds[i]),
                        steps_of[i], epochs_of[i]) for i in range(k) if len(ys[i]) > 0}
    totals = torch.zeros(k, dtype=torch.float64, device=x_all.device)
    seen = [0] * k
    while planned := _plan(iters, stack.steps, spec):
        _upload(planned, offsets, x_all.device)
        for step in planned:  # nothing here waits for the card: losses add up on it
            losses = _step(stack, step, data, grad_fn, spec)
            totals.index_add_(0, step.on_device["members"], losses.to(torch.float64) * step.length)
            for i in step.members:
                seen[i] += step.length
    _write_back(models, stack)
    return [{"train_loss": total / max(n, 1), "samples": float(n), "steps": float(s)}
            for total, n, s in zip(totals.tolist(), seen, stack.steps)]


@torch.no_grad()
def _write_back(models: Sequence[nn.Module], stack: _Stack) -> None:
    """Each model's own row of every trained parameter, copied into the model in place
    (so callers' references to its parameters stay valid)."""
    for k, model in enumerate(models):
        for name, p in model.named_parameters():
            if name in stack.params:
                p.copy_(stack.params[name][k])
