"""What a model is trained to predict: its loss, its targets' dtype, and its metrics.

Classification trains with cross-entropy on integer labels; regression with mean squared
error (or Huber) on float targets of shape ``(n, outputs)``. Metrics are computed from
the whole test set's outputs at once, so macro-F1 and AUROC are exact, not averages of
per-batch values. Plain torch, shared by participants and the driver's evaluator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from actors.spec.training import TaskSpec

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def loss_function(task: TaskSpec) -> Loss:
    """The mean loss of a batch's outputs against its targets."""
    if task.loss_name == "huber":
        delta = task.huber_delta
        return lambda out, y: F.huber_loss(out, y, delta=delta)
    if task.loss_name == "mse":
        return F.mse_loss
    return F.cross_entropy


def target_array(y: np.ndarray, task: TaskSpec) -> np.ndarray:
    """Labels as int64; regression targets as float32 ``(n, outputs)``, a scalar target
    included, so outputs and targets always have the same shape."""
    if task.kind == "classification":
        return np.asarray(y, dtype=np.int64).reshape(-1)
    y = np.asarray(y, dtype=np.float32)
    return y.reshape(len(y), -1)


def metrics(outputs: torch.Tensor, targets: torch.Tensor, task: TaskSpec,
            target_stds: Sequence[float] = ()) -> dict[str, float]:
    """Every metric of ``task`` (``loss`` included) for one test set's outputs. Regression
    targets the model learned standardized (``target_stds``) are scaled back, so mse and
    mae are in the target's own units (R² does not change; the loss stays as trained)."""
    if len(targets) == 0:
        return {name: float("nan") for name in _names(task)}
    outputs = outputs.float()
    loss = float(loss_function(task)(outputs, targets))
    if task.kind == "regression":
        scale = torch.as_tensor(list(target_stds) or [1.0], dtype=torch.float32, device=outputs.device)
        return {"loss": loss, **regression_metrics(outputs * scale, targets.float() * scale)}
    return {"loss": loss, **classification_metrics(outputs, targets)}


def _names(task: TaskSpec) -> list[str]:
    if task.kind == "regression":
        return ["loss", "mse", "mae", "r2"]
    return ["loss", "accuracy", "macro_f1", "auroc"]


def regression_metrics(pred: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """MSE, MAE and R² (1 - residual / total sum of squares, averaged over outputs, as
    scikit-learn's ``r2_score`` does by default); R² is NaN when a target is constant."""
    err = pred - y
    total = ((y - y.mean(0)) ** 2).sum(0)
    r2 = 1 - (err**2).sum(0) / total
    return {"mse": float((err**2).mean()), "mae": float(err.abs().mean()),
            "r2": float(r2.mean()) if bool((total > 0).all()) else float("nan")}


def classification_metrics(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy; macro-F1 over the classes present in the labels or the predictions; and,
    with two classes, AUROC of the positive class's probability (NaN when the test set
    holds one class only)."""
    pred = logits.argmax(1)
    classes = torch.unique(torch.cat([y, pred]))
    f1 = []
    for c in classes:
        tp = float(((pred == c) & (y == c)).sum())
        predicted, actual = float((pred == c).sum()), float((y == c).sum())
        f1.append(2 * tp / (predicted + actual) if predicted + actual else 0.0)
    out = {"accuracy": float((pred == y).float().mean()), "macro_f1": float(np.mean(f1))}
    out["auroc"] = auroc(torch.softmax(logits, 1)[:, 1], y) if logits.shape[1] == 2 else float("nan")
    return out


def auroc(scores: torch.Tensor, y: torch.Tensor) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random
    negative (ties count half), from the rank sum (Mann-Whitney U)."""
    s, positive = scores.double().cpu().numpy(), (y == 1).cpu().numpy()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)  # tied scores share their mean rank
    ranks = (sums / counts)[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
