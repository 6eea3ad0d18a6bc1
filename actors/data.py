"""Loading a participant's private data, inside its own actor.

Sources: a shard of a shared dataset (digits, or one pooled ``table``: every actor
recomputes the same seeded split and keeps its part), a participant's own generated data
(``synthetic``: each actor draws only its own rows), a participant's own CSV/Parquet file
(the cross-silo case: each hospital points at its own table on its own node), its own
Python loader, or its own image folder. Tables may be preprocessed with the run's fitted
transform (:mod:`actors.preprocess`). Errors name the participant, the file and the
column or value, because on a cluster the file lives on another machine. pandas is
imported only for table data.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from actors import partition
from actors.loaders import LoaderError, load_from_python, load_image_folder
from actors.preprocess import PreprocessError, apply_transform, feature_scales
from actors.spec import (
    DatasetSpec,
    FileData,
    FittedTransform,
    ImageData,
    ParticipantSpec,
    PythonData,
    TableColumns,
    TaskSpec,
    View,
)
from actors.synthetic import Synthetic

if TYPE_CHECKING:
    import pandas as pd


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


def _table_shared(spec: DatasetSpec) -> SharedDataset:
    """A pooled table: its labels for the partitioner and its class count (0 when the
    labels are not classes). The features stay in the frame (:func:`pooled_table`): a
    preprocessed run fits its transform on the raw columns first."""
    train, test = pooled_table(spec)
    labels = train[spec.label_column] if isinstance(spec.label_column, str) and spec.label_column in train else None
    integral = labels is not None and _integral(labels)
    y = labels.to_numpy(np.int64) if integral else np.zeros(len(train), np.int64)
    return SharedDataset(np.zeros((len(train), 0), np.float32), y, np.zeros((len(test), 0), np.float32),
                         np.zeros(len(test), np.int64), None, int(y.max()) + 1 if integral and len(y) else 0)


@lru_cache(maxsize=2)
def pooled_table(spec: DatasetSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``dataset: {name: table}``: the pooled table's training and test rows (a seeded
    split), read once per process."""
    frame = read_frame(Path(str(spec.path)), "dataset")
    order = np.random.default_rng(spec.seed).permutation(len(frame))
    n_test = int(round(spec.test_fraction * len(frame)))
    return frame.iloc[order[n_test:]].reset_index(drop=True), frame.iloc[order[:n_test]].reset_index(drop=True)


def _integral(values: pd.Series) -> bool:
    import pandas as pd

    if pd.api.types.is_integer_dtype(values):
        return True
    if not pd.api.types.is_numeric_dtype(values) or values.isna().any():
        return False
    array = values.to_numpy(np.float64)
    return bool(np.isfinite(array).all() and (array == np.round(array)).all())


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
    except DataError as exc:
        return str(exc)
    except ValueError as exc:
        return f"dataset.partition: {exc}"
    return None


def load_participant_data(spec: ParticipantSpec) -> LocalData:
    """What :class:`~actors.participant.Participant` calls when it sets itself up."""
    data = spec.data
    if isinstance(data, FileData) or _pooled(spec):
        frame, columns, where = site_frame(spec)
        x, y, names, scales = table_arrays(frame, columns, spec.task, _classes(spec), spec.transform, where)
        x = apply_view(x, data.view, getattr(data, "image_shape", None))  # a table shard has none
        local = _hold_out(x, y, data.test_fraction, x_classes(spec, y), spec.seed, where)
        return LocalData(*_fields(local), feature_names=names, feature_scales=scales)
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
    idx = split_indices(spec.dataset, full.y_train, spec.num_partitions)[spec.partition_index]
    x = apply_view(full.x_train[idx], data.view, full.image_shape)
    source = f"{spec.dataset.name} shard {spec.partition_index}/{spec.num_partitions}"
    if data.test_fraction > 0:
        return _hold_out(x, full.y_train[idx], data.test_fraction, full.num_classes, spec.seed, source)
    empty = np.zeros((0, *x.shape[1:]), np.float32)
    return LocalData(x, full.y_train[idx], empty, np.zeros(0, np.int64), full.num_classes, source)


def _pooled(spec: ParticipantSpec) -> bool:
    """A shard of a pooled table (``dataset: {name: table}``)."""
    return spec.data.source == "partition" and spec.dataset is not None and spec.dataset.name == "table"


def _fields(local: LocalData) -> tuple:
    return local.x_train, local.y_train, local.x_test, local.y_test, local.num_classes, local.source


def _classes(spec: ParticipantSpec) -> int | None:
    """The label space a classification table must fit (None: regression)."""
    if spec.task.kind == "regression":
        return None
    if _pooled(spec):
        assert spec.dataset is not None
        return load_shared_dataset(spec.dataset).num_classes
    return spec.data.num_classes


def x_classes(spec: ParticipantSpec, y: np.ndarray) -> int:
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
    idx = split_indices(spec.dataset, load_shared_dataset(spec.dataset).y_train, spec.num_partitions)
    where = f"participant {spec.name}: {spec.dataset.path} shard {spec.partition_index}/{spec.num_partitions}"
    columns = TableColumns(label_column=spec.dataset.label_column, feature_columns=spec.dataset.feature_columns)
    return train.iloc[idx[spec.partition_index]].reset_index(drop=True), columns, where


def read_frame(path: Path, who: str) -> pd.DataFrame:
    """A CSV/Parquet table with at least one row, or a :class:`DataError` naming whose
    file it is (``who``: "participant site-3", "evaluation") and what is wrong with it."""
    import pandas as pd  # only table data pays for it

    if not path.exists():
        raise DataError(f"{who}: data file not found: {path}")
    try:
        frame = pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{who}: {path} is empty (no header, no rows)") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure is the user's file
        raise DataError(f"{who}: cannot read {path}: {exc}") from None
    if frame.empty:
        raise DataError(f"{who}: {path} has no rows")
    return frame


def feature_names(frame: pd.DataFrame, columns: TableColumns, where: str) -> list[str]:
    """The feature columns (default: every column but the targets); missing ones are errors."""
    absent = [c for c in columns.label_columns if c not in frame.columns]
    if absent:
        raise DataError(f"{where} has no target column {absent[0]!r} "
                        f"(columns: {', '.join(map(str, frame.columns[:10]))})")
    features = columns.feature_columns or [c for c in frame.columns if c not in columns.label_columns]
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise DataError(f"{where} lacks feature columns {missing}")
    return features


def table_arrays(frame: pd.DataFrame, columns: TableColumns, task: TaskSpec, num_classes: int | None,
                 transform: FittedTransform | None, where: str
                 ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], np.ndarray | None]:
    """Features and targets of a table: through the fitted transform if the run has one,
    else its numeric columns as they are (their scales returned for the driver's warning)."""
    features = feature_names(frame, columns, where)
    y = table_targets(frame, columns.label_columns, task, num_classes, where)
    if transform is not None:
        extra = sorted(set(features) - set(transform.numeric) - set(transform.categories))
        if extra:
            raise DataError(f"{where} has columns the other sites lack: {extra[:5]} "
                            "(list feature_columns to choose the shared ones)")
        try:
            x = apply_transform(frame, transform, where)
            return x, transform.scale_targets(y), tuple(transform.output_columns), None
        except PreprocessError as exc:
            raise DataError(str(exc)) from None
    x = raw_features(frame, features, where)
    return x, y, tuple(features), feature_scales(x)


def raw_features(frame: pd.DataFrame, features: list[str], where: str) -> np.ndarray:
    """Numeric feature columns as float32; text, missing or infinite values are errors
    that say which preprocess setting handles them."""
    import pandas as pd

    text = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
    if text:
        sample = frame[text[0]].dropna().astype(str).iloc[:3].tolist()
        raise DataError(f"{where}: column {text[0]!r} is not numeric (values such as {sample}) and no "
                        "rule handles it: list it in preprocess.categorical, or leave it out of feature_columns")
    x = frame[features].to_numpy(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        column = features[int(np.argmax(bad.any(0)))]
        count = int(bad[:, features.index(column)].sum())
        raise DataError(f"{where}: column {column!r} has {count} missing or infinite values; "
                        "set preprocess: {impute: mean} to fill missing values")
    return x.astype(np.float32)


def table_targets(frame: pd.DataFrame, labels: list[str], task: TaskSpec, num_classes: int | None,
                  where: str) -> np.ndarray:
    """Class labels (one integer column within ``0..num_classes-1``) or regression targets
    (numeric columns, no missing values)."""
    import pandas as pd

    if task.kind == "regression":
        for column in labels:
            if not pd.api.types.is_numeric_dtype(frame[column]):
                sample = frame[column].dropna().astype(str).iloc[:3].tolist()
                raise DataError(f"{where}: regression target {column!r} is not numeric (values such as {sample})")
        y = frame[labels].to_numpy(np.float64)
        if not np.isfinite(y).all():
            column = labels[int(np.argmax((~np.isfinite(y)).any(0)))]
            raise DataError(f"{where}: regression target {column!r} has missing or infinite values")
        return y.astype(np.float32) if len(labels) > 1 else y[:, 0].astype(np.float32)
    if len(labels) != 1:
        raise DataError(f"{where}: classification takes one label column, not {labels}")
    values = frame[labels[0]]
    if not _integral(values):
        raise DataError(f"{where}: label column {labels[0]!r} must hold integers 0..{(num_classes or 2) - 1}, "
                        f"found dtype {values.dtype}" + (" with missing values" if values.isna().any() else ""))
    return class_labels(values.to_numpy(np.int64), num_classes, where)


def class_labels(y: np.ndarray, num_classes: int | None, where: str) -> np.ndarray:
    """Labels checked against the label space, the offending value named."""
    if num_classes is not None and len(y) and (y.min() < 0 or y.max() >= num_classes):
        bad = int(y[(y < 0) | (y >= num_classes)][0])
        raise DataError(f"{where}: label {bad} is outside 0..{num_classes - 1} (num_classes={num_classes}); "
                        f"labels span {int(y.min())}..{int(y.max())}")
    return y


def read_table(path: Path, columns: TableColumns, who: str, task: TaskSpec, num_classes: int | None,
               transform: FittedTransform | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A whole table as features and targets (the driver's evaluation table)."""
    x, y, _, _ = table_arrays(read_frame(path, who), columns, task, num_classes, transform, f"{who}: {path}")
    return x, y


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
    outputs = x_classes(spec, y)
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


def split_rows(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A site's training and held-out row indices: the same seed, the same split, so
    preprocessing statistics can leave out exactly the rows the site will test on."""
    n_test = int(round(fraction * n))
    order = np.random.default_rng(seed).permutation(n)
    return order[n_test:], order[:n_test]


def _hold_out(x, y, fraction, num_classes, seed, source) -> LocalData:
    tr, te = split_rows(len(y), fraction, seed)
    return LocalData(x[tr], y[tr], x[te], y[te], num_classes, source)
