"""Loading a participant's private data, inside its own actor.

Sources: a shard of a shared dataset (digits, or one pooled ``table``: every actor
recomputes the same seeded split and keeps its part), a participant's own generated data
(``synthetic``: each actor draws only its own rows), a participant's own CSV/Parquet file
(the cross-silo case: each hospital points at its own table on its own node), its own
Python loader, or its own image folder. Tables may be preprocessed with the run's fitted
transform (:mod:`actors.data.preprocess`). Errors name the participant, the file and the
column or value, because on a cluster the file lives on another machine. pandas is
imported only for table data.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from actors.data import partition
from actors.data.loaders import LoaderError, load_from_python, load_image_folder
from actors.data.synthetic import Synthetic
from actors.data.tables import (
    DataError,
    class_labels,
    integral,
    pooled_table,
    read_frame,
    split_rows,
    table_arrays,
)
from actors.spec.data import DatasetSpec, FileData, ImageData, PythonData, TableColumns, View
from actors.spec.participant import ParticipantSpec

if TYPE_CHECKING:
    import pandas as pd


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
    num_classes: int  # the model's outputs: classes, or regression targets
    source: str
    feature_names: tuple[str, ...] = ()  # a table's feature columns, as the model sees them
    feature_scales: np.ndarray | None = None  # unpreprocessed tables: each column's max |value|

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
    if spec.name == "table":
        return _table_shared(spec)
    if spec.name == "digits":
        pixels, labels = _digits_table()
        x = (pixels / 16.0).astype(np.float32)
        y = labels.astype(np.int64)
        image_shape = (1, 8, 8)
    else:  # pragma: no cover - the Literal in DatasetSpec rules this out
        raise ValueError(f"unknown dataset {spec.name!r}")
    train, test = split_rows(len(y), spec.test_fraction, spec.seed)
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


def _table_shared(spec: DatasetSpec) -> SharedDataset:
    """A pooled table: its labels for the partitioner and its class count (0 when the
    labels are not classes). The features stay in the frame (:func:`pooled_table`): a
    preprocessed run fits its transform on the raw columns first."""
    train, test = pooled_table(spec)
    labels = train[spec.label_column] if isinstance(spec.label_column, str) and spec.label_column in train else None
    classes = labels is not None and integral(labels)
    y = labels.to_numpy(np.int64) if classes else np.zeros(len(train), np.int64)
    return SharedDataset(np.zeros((len(train), 0), np.float32), y, np.zeros((len(test), 0), np.float32),
                         np.zeros(len(test), np.int64), None, int(y.max()) + 1 if classes and len(y) else 0)


@lru_cache(maxsize=4)
def split_indices(spec: DatasetSpec, num_parts: int) -> tuple[np.ndarray, ...]:
    """Every part's indices into the shared dataset's training rows, read-only. Computed once
    per process: a pool worker serves hundreds of participants of one split, and each
    recomputing all of it cost 6 ms for 1,000 iid parts (seconds for a Dirichlet split)."""
    labels = load_shared_dataset(spec).y_train
    parts = tuple(_split(spec, labels, num_parts))
    for part in parts:  # shared by every caller in the process
        part.flags.writeable = False
    return parts


def _split(spec: DatasetSpec, labels: np.ndarray, num_parts: int) -> list[np.ndarray]:
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
        split_indices(dataset, num_partitions)
    except DataError as exc:
        return str(exc)
    except partition.PartitionError as exc:
        p = dataset.partition
        fixes = [] if exc.min_size is None else [
            f"dataset.partition.min_size below {exc.min_size} (it is {p.min_size})",
            f"a larger dataset.partition.alpha (now {p.alpha:g}; larger is more even)"]
        fixes += [f"fewer than {num_partitions} participants", "dataset.partition.kind: iid"]
        return f"dataset.partition: {exc}; set {', '.join(fixes[:-1])} or {fixes[-1]}"
    except ValueError as exc:
        return f"dataset.partition: {exc}; use fewer than {num_partitions} participants"
    return None


def load_participant_data(spec: ParticipantSpec) -> LocalData:
    """What :class:`~actors.participant.participant.Participant` calls when it sets itself up."""
    data = spec.data
    if isinstance(data, FileData) or _pooled(spec):
        frame, columns, where = site_frame(spec)
        x, y, names, scales = table_arrays(frame, columns, spec.task, _classes(spec), spec.transform, where)
        x = apply_view(x, data.view, getattr(data, "image_shape", None))  # a table shard has none
        local = _hold_out(x, y, data.test_fraction, num_outputs(spec, y), spec.seed, where)
        return replace(local, feature_names=names, feature_scales=scales)
    if isinstance(data, PythonData):
        return _python_data(spec, data)
    if isinstance(data, ImageData):
        return _image_data(spec, data)
    if spec.dataset is None or spec.partition_index is None:
        raise DataError(f"participant {spec.name}: data source 'partition' needs a run-level 'dataset'")
    if spec.dataset.name == "synthetic":  # its own rows only, its own test split
        x, y, x_test, y_test = synthetic_task(spec.dataset).participant(spec.partition_index)
        return LocalData(apply_view(x, data.view, None), y, apply_view(x_test, data.view, None),
                         y_test, spec.dataset.num_classes, f"synthetic participant {spec.partition_index}")
    full = load_shared_dataset(spec.dataset)
    idx = split_indices(spec.dataset, spec.num_partitions)[spec.partition_index]
    x = apply_view(full.x_train[idx], data.view, full.image_shape)
    source = f"{spec.dataset.name} shard {spec.partition_index}/{spec.num_partitions}"
    if data.test_fraction > 0:
        return _hold_out(x, full.y_train[idx], data.test_fraction, full.num_classes, spec.seed, source)
    empty = np.zeros((0, *x.shape[1:]), np.float32)
    return LocalData(x, full.y_train[idx], empty, np.zeros(0, np.int64), full.num_classes, source)


def _pooled(spec: ParticipantSpec) -> bool:
    """A shard of a pooled table (``dataset: {name: table}``)."""
    return spec.data.source == "partition" and spec.dataset is not None and spec.dataset.name == "table"


def _classes(spec: ParticipantSpec) -> int | None:
    """The label space a classification table must fit (None: regression)."""
    if spec.task.kind == "regression":
        return None
    if _pooled(spec):
        assert spec.dataset is not None
        return load_shared_dataset(spec.dataset).num_classes
    return spec.data.num_classes


def num_outputs(spec: ParticipantSpec, y: np.ndarray) -> int:
    """The model's outputs: the label space, or the number of regression targets."""
    return _classes(spec) or (y.shape[1] if y.ndim > 1 else 1)


def site_frame(spec: ParticipantSpec) -> tuple[pd.DataFrame, TableColumns, str]:
    """A tabular participant's raw rows, the columns to read and how to name it in errors:
    its own file, or its shard of the pooled table."""
    data = spec.data
    if isinstance(data, FileData):
        path = data.path_for(spec.index_in_group, spec.name, spec.group)
        return read_frame(Path(path), f"participant {spec.name}"), data, f"participant {spec.name}: {path}"
    assert spec.dataset is not None and spec.partition_index is not None
    train, _ = pooled_table(spec.dataset)
    idx = split_indices(spec.dataset, spec.num_partitions)
    where = f"participant {spec.name}: {spec.dataset.path} shard {spec.partition_index}/{spec.num_partitions}"
    columns = TableColumns(label_column=spec.dataset.label_column, feature_columns=spec.dataset.feature_columns)
    return train.iloc[idx[spec.partition_index]].reset_index(drop=True), columns, where


def _python_data(spec: ParticipantSpec, data: PythonData) -> LocalData:
    """The site's own loader, called here, inside its actor."""
    where = f"participant {spec.name}"
    try:
        x, y, x_test, y_test = load_from_python(data.factory, data.options, spec.name, spec.index_in_group,
                                                spec.group, spec.name)
    except LoaderError as exc:
        raise DataError(str(exc)) from None
    y, y_test = (_array_targets(v, spec, f"{where}: {data.factory}") for v in (y, y_test))
    x = apply_view(x, data.view, data.image_shape)
    outputs = num_outputs(spec, y)
    if x_test is not None and y_test is not None:
        if data.test_fraction:
            raise DataError(f"{where}: {data.factory} returned its own test split; drop test_fraction")
        return LocalData(x, y, apply_view(x_test, data.view, data.image_shape), y_test, outputs, data.factory)
    return _hold_out(x, y, data.test_fraction, outputs, spec.seed, data.factory)


def _array_targets(y: np.ndarray | None, spec: ParticipantSpec, where: str) -> np.ndarray | None:
    if y is None:
        return None
    if spec.task.kind == "regression":
        if not np.issubdtype(y.dtype, np.number):
            raise DataError(f"{where}: regression targets are not numeric (dtype {y.dtype})")
        return y.astype(np.float32)
    if not np.issubdtype(y.dtype, np.integer) and not (
            np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all()):
        raise DataError(f"{where}: class labels must be integers, got dtype {y.dtype}")
    return class_labels(y.astype(np.int64).reshape(-1), spec.data.num_classes, where)


def _image_data(spec: ParticipantSpec, data: ImageData) -> LocalData:
    """The site's image folder, one subfolder per class."""
    root = data.path_for(spec.index_in_group, spec.name, spec.group)
    try:
        x, y, classes = load_image_folder(root, data.image_shape, data.classes, spec.name)
    except LoaderError as exc:
        raise DataError(str(exc)) from None
    num_classes = data.num_classes or len(classes)
    y = class_labels(y, num_classes, f"participant {spec.name}: {root}")
    return _hold_out(apply_view(x, data.view, data.image_shape), y, data.test_fraction, num_classes,
                     spec.seed, root)


def _hold_out(x, y, fraction, num_classes, seed, source) -> LocalData:
    tr, te = split_rows(len(y), fraction, seed)
    return LocalData(x[tr], y[tr], x[te], y[te], num_classes, source)
