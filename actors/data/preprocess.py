"""A site's half of federated preprocessing: its statistics, and applying the fit.

Raw site tables come in their own units (0.001 to 4,000 in clinical data) with missing
values and text categories. Standardizing with one site's own statistics would give
every site a different feature space, so the driver fits one transform from all sites'
statistics (``orchestrator/server/preprocessing.py``) in three rounds, each a plain sum that
secure aggregation can mask:

1. per numeric column, a one-hot of the power of two of its largest absolute value (their
   sum is a histogram over the sites; its top bucket fixes a power-of-two scale per column,
   so the next sums fit secure aggregation's fixed point whatever the units: 1e-6 or 1e5);
2. per numeric column, the count of present values and the sum of the scaled values (the
   global mean);
3. per numeric column, the sum of squared scaled deviations from that global mean (the
   global variance, computed this way because ``E[x^2] - E[x]^2`` cancels catastrophically
   for a column such as 4,000 +- 1), at a scale of its own: a column whose deviations are
   too small for the fixed point at its magnitude's scale (4,000 +- 0.01) is summed again
   at a finer one, until they are resolved.

The category values of each categorical column travel in the clear beforehand: they are
the table's schema (and fix the one-hot layout), not statistics. pandas is needed here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from actors.spec.data import MISSING_CATEGORY, FittedTransform, PreprocessSpec

if TYPE_CHECKING:
    import pandas as pd


class PreprocessError(ValueError):
    """A table that the preprocessing cannot handle; the message names site, file and column."""


def text_columns(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """The ``columns`` pandas did not read as numbers."""
    import pandas as pd

    return [c for c in columns if not pd.api.types.is_numeric_dtype(frame[c])]


def not_numeric(frame: pd.DataFrame, column: str) -> str:
    """``column 'x' is not numeric (values such as [...])``: what errors say of a text column."""
    return f"column {column!r} is not numeric (values such as {frame[column].dropna().astype(str).iloc[:3].tolist()})"


def site_schema(frame: pd.DataFrame, features: list[str], spec: PreprocessSpec, where: str) -> dict:
    """Round 0: the numeric feature columns, and each categorical column's values (a
    missing value counts as :data:`MISSING_CATEGORY` when imputing)."""
    unknown = [c for c in spec.categorical if c not in features]
    if unknown:
        raise PreprocessError(f"{where}: preprocess.categorical names columns it lacks: {unknown}")
    numeric = [c for c in features if c not in spec.categorical]
    text = text_columns(frame, numeric)
    if text:
        raise PreprocessError(
            f"{where}: {not_numeric(frame, text[0])}; list it in preprocess.categorical to one-hot "
            "encode it" + (f" (also: {text[1:5]})" if text[1:] else ""))
    categories = {}
    for column in spec.categorical:
        values = frame[column]
        if values.isna().any() and spec.impute == "refuse":
            raise PreprocessError(f"{where}: categorical column {column!r} has {int(values.isna().sum())} "
                                  "missing values and preprocess.impute is 'refuse'")
        categories[column] = sorted({*values.dropna().astype(str), *([MISSING_CATEGORY] if values.isna().any() else [])})
    return {"numeric": numeric, "categories": categories, "rows": len(frame)}


def numeric_block(frame: pd.DataFrame, numeric: list[str], where: str) -> np.ndarray:
    """The numeric columns as float64, NaN where missing; inf is never a measurement.
    A text column is named: a regression target under ``standardize_target`` (the schema
    checks features only), or an evaluation table's column the sites held as numbers."""
    text = text_columns(frame, numeric)
    if text:
        raise PreprocessError(f"{where}: {not_numeric(frame, text[0])}")
    x = frame[numeric].to_numpy(np.float64) if numeric else np.zeros((len(frame), 0))
    bad = np.isinf(x).any(0)
    if bad.any():
        raise PreprocessError(f"{where}: column {numeric[int(np.argmax(bad))]!r} holds inf values")
    return x


EXPONENTS = np.arange(-64, 65)
"""Powers of two a column's largest magnitude may have (beyond: clipped to the ends)."""


def magnitudes(x: np.ndarray) -> np.ndarray:
    """Round 1: per column, a one-hot over :data:`EXPONENTS` of ``frexp(max |x|)``'s
    exponent (all zeros for a column with no non-zero value)."""
    peak = np.nan_to_num(np.nanmax(np.abs(x), axis=0), nan=0.0) if len(x) else np.zeros(x.shape[1])
    out = np.zeros((x.shape[1], len(EXPONENTS)))
    present = peak > 0
    exponent = np.clip(np.frexp(peak)[1], EXPONENTS[0], EXPONENTS[-1]) - EXPONENTS[0]
    out[np.flatnonzero(present), exponent[present]] = 1.0
    return out.ravel()


def scales_from(histogram: np.ndarray, columns: int) -> np.ndarray:
    """Per column ``2**-e`` for the largest exponent any site has, so every scaled value
    lies within [-1, 1]; 1.0 for a column that is zero everywhere."""
    counts = histogram.reshape(columns, len(EXPONENTS))
    top = np.array([EXPONENTS[np.flatnonzero(c > 0.5)[-1]] if (c > 0.5).any() else 0 for c in counts])
    return np.ldexp(1.0, -top)


def sums(x: np.ndarray) -> np.ndarray:
    """Round 2: ``[count of present values..., their sum...]`` per column."""
    present = ~np.isnan(x)
    return np.concatenate([present.sum(0), np.where(present, x, 0.0).sum(0)]).astype(np.float64)


def squared_deviations(x: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Round 3: per column, the sum of ``(x - global mean)^2`` over present values."""
    return np.nansum((x - means) ** 2, axis=0).astype(np.float64) if x.size else np.zeros(x.shape[1])


def apply_transform(frame: pd.DataFrame, transform: FittedTransform, where: str) -> np.ndarray:
    """The model's float32 features: numeric columns imputed and standardized, then each
    categorical column one-hot over the fitted values (an unseen value: all zeros)."""
    missing = [c for c in [*transform.numeric, *transform.categories] if c not in frame.columns]
    if missing:
        raise PreprocessError(f"{where}: lacks columns the run was fitted on: {missing[:5]}")
    x = numeric_block(frame, transform.numeric, where)
    gaps = np.isnan(x)
    if gaps.any():
        if transform.impute == "refuse":
            column = transform.numeric[int(np.argmax(gaps.any(0)))]
            raise PreprocessError(f"{where}: column {column!r} has {int(gaps[:, transform.numeric.index(column)].sum())} "
                                  "missing values and preprocess.impute is 'refuse'")
        x = np.where(gaps, np.asarray(transform.means), x)
    if transform.standardize:
        x = (x - np.asarray(transform.means)) / np.asarray(transform.stds)
    blocks = [x]
    for column, values in transform.categories.items():
        text = frame[column].astype("string").fillna(MISSING_CATEGORY).to_numpy()
        blocks.append((text[:, None] == np.asarray(values, dtype=object)[None, :]).astype(np.float64))
    return np.concatenate(blocks, axis=1).astype(np.float32)


def feature_scales(x: np.ndarray) -> np.ndarray:
    """Each column's typical magnitude (its largest absolute value), for the driver's
    warning when scales differ by more than 100x and nothing standardizes them."""
    return np.nanmax(np.abs(x), axis=0) if len(x) else np.zeros(x.shape[1])
