"""Loading a participant's private data, inside its own actor.

Two sources: a shard of a shared benchmark dataset (every actor recomputes the same
seeded split and keeps its part) and a participant's own CSV/Parquet file (the cross-silo
case: each hospital points at its own table on its own node). Errors name the
participant and the file, because on a cluster the file lives on another machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from actors import partition
from actors.spec import DatasetSpec, FileData, ParticipantSpec, View


class DataError(Exception):
    """A participant's data cannot be used; the message says whose and why."""


@dataclass(frozen=True)
class SharedDataset:
    """A whole benchmark dataset with its held-out test split, features flat."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple[int, int, int]
    num_classes: int
    x_public: np.ndarray | None = None  # unlabelled public slice, excluded from x_train


@dataclass(frozen=True)
class LocalData:
    """One participant's arrays, already in the view its model expects."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


@lru_cache(maxsize=4)
def load_shared_dataset(spec: DatasetSpec) -> SharedDataset:
    """Load and split deterministically (same seed -> same split in every process)."""
    if spec.name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = (bunch.data / 16.0).astype(np.float32)
        y = bunch.target.astype(np.int64)
        image_shape = (1, 8, 8)
    else:  # pragma: no cover - the Literal in DatasetSpec rules this out
        raise ValueError(f"unknown dataset {spec.name!r}")
    order = np.random.default_rng(spec.seed).permutation(len(y))
    n_test = int(round(spec.test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    if spec.public_size >= len(train):
        raise ValueError(f"dataset.public_size={spec.public_size} leaves no training data ({len(train)} examples)")
    public, train = train[: spec.public_size], train[spec.public_size :]
    return SharedDataset(x[train], y[train], x[test], y[test], image_shape, int(y.max()) + 1, x[public])


def apply_view(x: np.ndarray, view: View, image_shape: tuple[int, int, int] | None) -> np.ndarray:
    """Reshape flat rows into the model's view: flat, (C,H,W) image, or (H, W*C) rows."""
    if view == "flat":
        return x.reshape(len(x), -1)
    if image_shape is None:
        raise ValueError(f"view {view!r} needs an image shape")
    c, h, w = image_shape
    img = x.reshape(len(x), c, h, w)
    return img if view == "image" else img.transpose(0, 2, 3, 1).reshape(len(x), h, w * c)


def split_indices(spec: DatasetSpec, labels: np.ndarray, num_parts: int) -> list[np.ndarray]:
    p = spec.partition
    if p.kind == "iid":
        return partition.iid(len(labels), num_parts, spec.seed)
    if p.kind == "dirichlet":
        return partition.dirichlet(labels, num_parts, p.alpha, spec.seed, p.min_size)
    return partition.shards(labels, num_parts, p.shards_per_participant, spec.seed)


def load_participant_data(spec: ParticipantSpec) -> LocalData:
    """What :class:`~actors.participant.Participant` calls in its constructor."""
    data = spec.data
    if isinstance(data, FileData):
        path = data.path_for(spec.index_in_group, spec.name, spec.group)
        x, y = read_table(Path(path), data, spec.name)
        x = apply_view(x, data.view, data.image_shape)
        return _hold_out(x, y, data.test_fraction, data.num_classes, spec.seed, path)
    if spec.dataset is None or spec.partition_index is None:
        raise DataError(f"participant {spec.name}: data source 'partition' needs a run-level 'dataset'")
    full = load_shared_dataset(spec.dataset)
    idx = split_indices(spec.dataset, full.y_train, spec.num_partitions)[spec.partition_index]
    x = apply_view(full.x_train[idx], data.view, full.image_shape)
    source = f"{spec.dataset.name} shard {spec.partition_index}/{spec.num_partitions}"
    if data.test_fraction > 0:
        return _hold_out(x, full.y_train[idx], data.test_fraction, full.num_classes, spec.seed, source)
    empty = np.zeros((0, *x.shape[1:]), np.float32)
    return LocalData(x, full.y_train[idx], empty, np.zeros(0, np.int64), full.num_classes, source)


def read_table(path: Path, spec: FileData, who: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a CSV/Parquet table into float32 features and int64 labels, or say why not."""
    if not path.exists():
        raise DataError(f"participant {who}: data file not found: {path}")
    try:
        frame = pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the user's file
        raise DataError(f"participant {who}: cannot read {path}: {exc}") from None
    if frame.empty:
        raise DataError(f"participant {who}: {path} has no rows")
    if spec.label_column not in frame.columns:
        raise DataError(
            f"participant {who}: {path} has no label column {spec.label_column!r} "
            f"(columns: {', '.join(map(str, frame.columns[:10]))})"
        )
    features = spec.feature_columns or [c for c in frame.columns if c != spec.label_column]
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise DataError(f"participant {who}: {path} lacks feature columns {missing}")
    non_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        raise DataError(f"participant {who}: {path} has non-numeric feature columns {non_numeric[:5]}")
    labels = frame[spec.label_column]
    if not pd.api.types.is_integer_dtype(labels):
        raise DataError(
            f"participant {who}: label column {spec.label_column!r} in {path} must hold "
            f"integers 0..{spec.num_classes - 1}, found dtype {labels.dtype}"
        )
    y = labels.to_numpy(np.int64)
    if y.min() < 0 or y.max() >= spec.num_classes:
        raise DataError(
            f"participant {who}: labels in {path} span {y.min()}..{y.max()}, "
            f"outside 0..{spec.num_classes - 1} (num_classes={spec.num_classes})"
        )
    x = frame[features].to_numpy(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"participant {who}: {path} has missing or non-finite feature values")
    return x, y


def _hold_out(x, y, fraction, num_classes, seed, source) -> LocalData:
    n_test = int(round(fraction * len(y)))
    order = np.random.default_rng(seed).permutation(len(y))
    te, tr = order[:n_test], order[n_test:]
    return LocalData(x[tr], y[tr], x[te], y[te], num_classes, source)
