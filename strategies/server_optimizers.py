"""Server-side optimizer steps shared by FedSGD, FedAvgM and the FedOpt family.

Each function takes the strategy's ``state`` dict (numpy arrays, so it checkpoints with
``state_dict()``), updates it in place and returns the step to *add* to the global
parameters. Strategies compose these instead of inheriting from one another.

All arithmetic is elementwise and in place on float32 vectors: a few passes over the
parameter vector, independent of how many participants contributed.
"""

from __future__ import annotations

import numpy as np


def _slot(state: dict[str, np.ndarray], key: str, like: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """The state vector ``key``, created filled with ``fill`` the first time."""
    if key not in state:
        state[key] = np.full(like.shape, fill, dtype=np.float32)
    return state[key]


def momentum_step(state: dict[str, np.ndarray], direction: np.ndarray, beta: float) -> np.ndarray:
    """Heavy-ball momentum: ``v = beta * v + direction``; returns ``v`` (a copy).

    ``direction`` is what the step should follow (an averaged delta, or minus a gradient).
    """
    v = _slot(state, "momentum", direction)
    v *= np.float32(beta)
    v += direction
    return v.copy()


def adam_step(
    state: dict[str, np.ndarray],
    gradient: np.ndarray,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
) -> np.ndarray:
    """One Adam step with bias correction (Kingma & Ba, 2015) on a *gradient*.

    Returns ``-lr * m_hat / (sqrt(v_hat) + eps)``: the step to add to the parameters.
    """
    m = _slot(state, "m", gradient)
    v = _slot(state, "v", gradient)
    t = float(state.get("step", np.zeros(1, np.float32))[0]) + 1.0
    state["step"] = np.array([t], dtype=np.float32)
    m *= np.float32(beta1)
    m += np.float32(1.0 - beta1) * gradient
    v *= np.float32(beta2)
    v += np.float32(1.0 - beta2) * np.square(gradient)
    denom = np.sqrt(v / np.float32(1.0 - beta2**t))
    denom += np.float32(eps)
    step = m * np.float32(-lr / (1.0 - beta1**t))
    step /= denom
    return step


def fedopt_step(
    state: dict[str, np.ndarray],
    pseudo_gradient: np.ndarray,
    rule: str,
    eta: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> np.ndarray:
    """One server step of Reddi et al. 2021, Algorithm 2, on the averaged delta.

    ``m = beta1 m + (1 - beta1) d``; then, by ``rule``:
    ``adagrad``: ``v = v + d^2``; ``adam``: ``v = beta2 v + (1 - beta2) d^2``;
    ``yogi``: ``v = v - (1 - beta2) d^2 sign(v - d^2)``. Returns ``eta m / (sqrt(v) + tau)``.
    As in the paper there is no bias correction, and ``v`` starts at ``tau^2``.
    """
    d = pseudo_gradient
    m = _slot(state, "m", d)
    v = _slot(state, "v", d, fill=tau * tau)
    m *= np.float32(beta1)
    m += np.float32(1.0 - beta1) * d
    d2 = np.square(d)
    if rule == "adagrad":
        v += d2
    elif rule == "adam":
        v *= np.float32(beta2)
        v += np.float32(1.0 - beta2) * d2
    elif rule == "yogi":
        v -= np.float32(1.0 - beta2) * d2 * np.sign(v - d2)
    else:
        raise ValueError(f"unknown FedOpt rule {rule!r}; known: adagrad, adam, yogi")
    denom = np.sqrt(v)
    denom += np.float32(tau)
    step = m * np.float32(eta)
    step /= denom
    return step
