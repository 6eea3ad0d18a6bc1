"""Reading a site's table: its raw rows, its features and targets, and what is wrong.

Every error names the site (or ``evaluation``), the file and the column or value, since
on a cluster the file lives on another machine; a table the run preprocesses goes
through the fitted transform (:mod:`actors.data.preprocess`). pandas is imported only here.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from actors.data.preprocess import (
    PreprocessError,
    apply_transform,
    feature_scales,
    not_numeric,
    text_columns,
)
from actors.spec.data import DatasetSpec, FittedTransform, TableColumns
from actors.spec.training import TaskSpec

if TYPE_CHECKING:
    import pandas as pd


class DataError(Exception):
    """A participant's data cannot be used; the message says whose and why."""


class TransformMissing(DataError):
    """The run preprocesses its tables and this participant set up without the fitted
    transform: a restarted actor runs its constructor's spec again, from before the fit.
    The driver sends it once more (:meth:`~actors.participant.participant.Participant.adopt`)
    and the task is retried."""


def split_rows(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out row indices of ``n`` rows: the same seed, the same split, in
    every process (a site's own test split, a dataset's test split), so preprocessing
    statistics can leave out exactly the rows a site will test on."""
    n_test = int(round(fraction * n))
    order = np.random.default_rng(seed).permutation(n)
    return order[n_test:], order[:n_test]


@lru_cache(maxsize=2)
def pooled_table(spec: DatasetSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``dataset: {name: table}``: the pooled table's training and test rows (a seeded
    split), read once per process."""
    frame = read_frame(Path(str(spec.path)), "dataset")
    train, test = split_rows(len(frame), spec.test_fraction, spec.seed)
    return frame.iloc[train].reset_index(drop=True), frame.iloc[test].reset_index(drop=True)


def integral(values: pd.Series) -> bool:
    """Whether a column holds whole numbers only (an integer dtype, or floats without a
    fraction: pandas reads an integer column with a gap as floats)."""
    import pandas as pd

    if pd.api.types.is_integer_dtype(values):
        return True
    if not pd.api.types.is_numeric_dtype(values) or values.isna().any():
        return False
    array = values.to_numpy(np.float64)
    return bool(np.isfinite(array).all() and (array == np.round(array)).all())


def read_frame(path: Path, who: str, what: str = "data file", empty_ok: bool = False) -> pd.DataFrame:
    """The one reader of a CSV/Parquet file: its table (with at least one row unless
    ``empty_ok``), or a :class:`DataError` naming whose file it is (``who``: "participant
    site-3", "evaluation", a group's trace; ``what``: the kind of file) and what is wrong."""
    import pandas as pd  # only table data pays for it

    if not path.exists():
        raise DataError(f"{who}: {what} not found: {path}")
    try:
        frame = pd.read_parquet(path) if path.suffix in (".parquet", ".pq") else pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{who}: {path} is empty (no header, no rows)") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure is the user's file
        raise DataError(f"{who}: cannot read {path}: {exc}") from None
    if frame.empty and not empty_ok:
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

    text = text_columns(frame, features)
    if text:
        raise DataError(f"{where}: {not_numeric(frame, text[0])} and no rule handles it: list it in "
                        "preprocess.categorical, or leave it out of feature_columns")
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

    if task.kind == "regression":
        text = text_columns(frame, labels)
        if text:
            raise DataError(f"{where}: regression target {not_numeric(frame, text[0]).removeprefix('column ')}")
        y = frame[labels].to_numpy(np.float64)
        if not np.isfinite(y).all():
            column = labels[int(np.argmax((~np.isfinite(y)).any(0)))]
            raise DataError(f"{where}: regression target {column!r} has missing or infinite values")
        return y.astype(np.float32) if len(labels) > 1 else y[:, 0].astype(np.float32)
    if len(labels) != 1:
        raise DataError(f"{where}: classification takes one label column, not {labels}")
    values = frame[labels[0]]
    if not integral(values):
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
    """A whole table file as features and targets (the driver's evaluation table):
    :func:`read_frame`, then :func:`table_arrays`."""
    x, y, _, _ = table_arrays(read_frame(path, who), columns, task, num_classes, transform, f"{who}: {path}")
    return x, y
