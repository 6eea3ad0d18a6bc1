"""Loading a participant's private data, inside its own actor.

Three sources: a shard of a shared benchmark dataset (every actor recomputes the same
seeded split and keeps its part), a participant's own generated data (``synthetic``: each
actor draws only its own rows), and a participant's own CSV/Parquet file (the cross-silo
case: each hospital points at its own table on its own node). Errors name the
participant and the file, because on a cluster the file lives on another machine.
pandas is imported only for file data.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from actors import partition
from actors.spec import DatasetSpec, FileData, ParticipantSpec, View
from actors.synthetic import Synthetic


class DataError(Exception):
    """A participant's data cannot be used; the message says whose and why."""


@dataclass(frozen=True)
class SharedDataset:
    """A whole benchmark dataset with its held-out test split, features flat.

    For ``synthetic`` there is no shared training pool (each participant generates its
    own): ``x_train`` is empty and the test split pools participants' own test splits.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple[int, int, int] | None  # None: flat features only
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
def load_shared_dataset(spec: DatasetSpec, population: int | None = None) -> SharedDataset:
    """Load and split deterministically (same seed -> same split in every process).

    ``population``: how many participants the run has; the synthetic test set pools the
    first ``min(spec.eval_participants, population)``. Digits ignores it.
    """
    if spec.name == "synthetic":
        return _synthetic_shared(spec, population)
    if spec.name == "digits":
        pixels, labels = _digits_table()
        x = (pixels / 16.0).astype(np.float32)
        y = labels.astype(np.int64)
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


def _digits_table() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (pixels 0..16, labels), read from the file it ships:
    importing scikit-learn would cost every actor about a second of CPU (SciPy, pandas)."""
    found = importlib.util.find_spec("sklearn")  # finds the package without importing it
    path = Path(found.origin).parent / "datasets" / "data" / "digits.csv.gz" if found and found.origin else None
    if path is None or not path.exists():  # a layout this does not know: the public loader
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.data, bunch.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1]


def synthetic_task(spec: DatasetSpec) -> Synthetic:
    """The Synthetic(alpha, beta) generator a ``name: synthetic`` dataset describes."""
    return Synthetic(
        alpha=spec.alpha, beta=spec.beta, num_features=spec.num_features,
        num_classes=spec.num_classes, seed=spec.seed, size_mu=spec.size_mu,
        size_sigma=spec.size_sigma, min_size=spec.min_size, max_size=spec.max_size,
        test_fraction=spec.test_fraction,
    )


def _synthetic_shared(spec: DatasetSpec, population: int | None) -> SharedDataset:
    """The driver's test set: the pooled test splits of the first participants. A fixed
    sample (not all participants) keeps evaluation cheap with 10,000 of them, and the
    same set for any run at least ``eval_participants`` large, so such runs compare."""
    count = spec.eval_participants if population is None else min(spec.eval_participants, population)
    task = synthetic_task(spec)
    x_test, y_test = task.pooled_test_set(range(count))
    empty = np.zeros((0, spec.num_features), np.float32)
    return SharedDataset(empty, np.zeros(0, np.int64), x_test, y_test, None, spec.num_classes)


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


def partition_problem(dataset: DatasetSpec | None, num_partitions: int) -> str | None:
    """Why the shared dataset cannot be split into ``num_partitions`` parts, or None: checked
    once on the driver before any participant starts, since each would otherwise fail alone
    the same way (100 identical errors after 55 s for an infeasible ``min_size``)."""
    if dataset is None or num_partitions == 0 or dataset.name == "synthetic":
        return None
    try:
        split_indices(dataset, load_shared_dataset(dataset).y_train, num_partitions)
    except ValueError as exc:
        return f"dataset.partition: {exc}"
    return None


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
    if spec.dataset.name == "synthetic":  # its own rows only, its own test split
        x, y, x_test, y_test = synthetic_task(spec.dataset).participant(spec.partition_index)
        return LocalData(apply_view(x, data.view, None), y, apply_view(x_test, data.view, None),
                         y_test, spec.dataset.num_classes, f"synthetic participant {spec.partition_index}")
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
    import pandas as pd  # only file data pays for it

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
