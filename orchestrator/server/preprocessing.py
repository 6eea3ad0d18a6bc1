"""The driver's half of federated preprocessing: fit one transform from every site's sums.

After the participants start and before any of them sets up its model, the driver asks
each site for its table's schema, then for three rounds of per-column sums
(:mod:`actors.data.preprocess` says which and why). With ``privacy.secure_aggregation`` the
sums are masked like model updates, so the driver learns only the totals. The fitted
:class:`~actors.spec.data.FittedTransform` is saved as ``preprocess.json`` in the run
directory, handed to every participant (late joiners and restarted actors included) and
applied to the evaluation table.

Without ``preprocess``, tables whose feature scales differ by more than
:data:`SCALE_WARNING_RATIO` get one warning naming the widest columns: a network trained
on raw clinical units ends at the majority class without saying why.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray

from actors.data.preprocess import EXPONENTS, scales_from
from actors.spec.data import FittedTransform, PreprocessSpec
from orchestrator.server.privacy import PrivacyHooks

STATISTICS_TIMEOUT_S = 120.0
"""How long a site may take to read its table and answer one round."""

SCALE_WARNING_RATIO = 100.0
"""Warn when the largest feature column's magnitude exceeds the smallest's this many times."""


class PreprocessingError(RuntimeError):
    """The sites' tables cannot be fitted together; the message names sites and columns."""


def fit_transform(spec: PreprocessSpec, members: dict[str, Any], privacy: PrivacyHooks,
                  targets: list[str]) -> FittedTransform:
    """Schema, then sums, then squared deviations, from the ``members`` (name -> driver-side
    ``Member``); raises :class:`PreprocessingError` naming what does not fit. The
    ``targets`` columns (those the run standardizes, else none) join the sums."""
    schemas = _collect({m.call("table_schema"): name for name, m in members.items()}, "schema")
    features = _shared_columns(schemas)
    numeric = features + targets
    categories = {column: sorted({v for s in schemas.values() for v in s["categories"][column]})
                  for column in spec.categorical}
    means, stds = fit_statistics(
        lambda scales, means, size: _sum(members, privacy, numeric, scales, means, size), numeric)
    f = len(features)
    return FittedTransform(numeric=features, means=means[:f].tolist(), stds=stds[:f].tolist(),
                           categories=categories, standardize=spec.standardize, impute=spec.impute,
                           rows=int(sum(s["rows"] for s in schemas.values())),
                           target_means=means[f:].tolist(), target_stds=stds[f:].tolist())


Round = Callable[[list[float] | None, list[float] | None, int], np.ndarray]
"""``(scales, means, size) -> the sites' summed statistics``: one round (plain or masked)."""


RESOLVED_SPREAD = 2.0**-8
"""A column's mean squared scaled deviation from which its variance is taken as precise:
with about 2**-24 of fixed point per site's sum, it keeps about 16 bits of the variance."""

UNRESOLVED_ZOOM = 2.0**12
"""How much finer the deviation scale gets after a round in which a column's deviations
summed to zero (each site's sum below the fixed point's step, so each squared deviation
below 2**-25: after this zoom still below 2**-1, so no sum can overflow)."""

MAX_ZOOM = 2.0**36
"""A std below the column's magnitude over this is taken as none (a constant column: std
1), and no finer deviation scale is tried: float64 rows carry about 2**-52 of their
magnitude, so a smaller spread is rounding."""


def fit_statistics(total: Round, numeric: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Global means and standard deviations of the ``numeric`` columns from rounds of sums
    (magnitudes, then scaled counts and sums, then squared deviations); a column that is
    constant everywhere gets std 1 and so stays constant (zero).

    The deviations get a scale of their own: the magnitude's scale fits ``4000 +- 0.01``
    to 1 but leaves its squared deviations (6e-12) below secure aggregation's fixed point,
    so a column whose deviations come back too small is summed again at a finer scale
    (:data:`UNRESOLVED_ZOOM` when they summed to zero, else the one that brings them near 1)."""
    k = len(numeric)
    scales = scales_from(total(None, None, k * len(EXPONENTS)), k)
    first = total(scales.tolist(), None, 2 * k)
    counts, totals = first[:k], first[k:]
    empty = [c for c, n in zip(numeric, counts) if n == 0]
    if empty:
        raise PreprocessingError(f"column(s) {empty} have no values at any site")
    scaled_means = totals / counts
    zoom = np.ones(k)
    while True:
        deviations = total((scales * zoom).tolist(), (scaled_means * zoom).tolist(), k)
        spread = np.maximum(deviations, 0.0) / counts  # mean squared deviation at scales * zoom
        step = np.where(spread > 0, np.exp2(np.floor(-0.5 * np.log2(np.where(spread > 0, spread, 1.0)))),
                        UNRESOLVED_ZOOM)
        finer = (spread < RESOLVED_SPREAD) & (zoom < MAX_ZOOM)
        if not finer.any():
            break
        zoom = np.where(finer, np.minimum(zoom * step, MAX_ZOOM), zoom)
    stds = np.sqrt(spread) / (scales * zoom)
    return scaled_means / scales, np.where(stds * scales * MAX_ZOOM > 1.0, stds, 1.0)


def _shared_columns(schemas: dict[str, dict]) -> list[str]:
    """The numeric columns, which every site must have alike."""
    (first, reference), *others = sorted(schemas.items())
    for name, schema in others:
        if schema["numeric"] != reference["numeric"]:
            only_here = sorted(set(schema["numeric"]) - set(reference["numeric"]))
            only_there = sorted(set(reference["numeric"]) - set(schema["numeric"]))
            raise PreprocessingError(
                f"participant {name}'s table has different columns from participant {first}'s: "
                f"only in {name}: {only_here or 'none'}; only in {first}: {only_there or 'none'}"
                + ("" if only_here or only_there else " (same columns, another order)"))
    return list(reference["numeric"])


def _sum(members: dict[str, Any], privacy: PrivacyHooks, numeric: list[str], scales: list[float] | None,
         means: list[float] | None, size: int) -> np.ndarray:
    """One round's total over the sites: masked under secure aggregation, else plain."""
    if privacy.secure:
        total, dropped = privacy.secure_sum(
            members, size, lambda name, cohort_id, peers: privacy.call(
                members[name], "masked_table_statistics", numeric, scales, means, cohort_id, peers))
        if dropped:
            raise PreprocessingError(f"participants {dropped} left during secure preprocessing")
        return total
    vectors = _collect({m.call("table_statistics", numeric, scales, means): name for name, m in members.items()},
                       "statistics")
    return np.sum(list(vectors.values()), axis=0)


def _collect(refs: dict[ray.ObjectRef, str], what: str) -> dict[str, Any]:
    """Every site's answer; one that fails or does not answer stops the fit, naming it
    (a transform fitted without a site would not describe its data)."""
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=STATISTICS_TIMEOUT_S)
    if late:
        raise PreprocessingError(f"participants {sorted(refs[r] for r in late)} sent no table {what} "
                                 f"within {STATISTICS_TIMEOUT_S:.0f}s")
    out = {}
    for ref in ready:
        try:
            out[refs[ref]] = ray.get(ref)
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None) or exc
            raise PreprocessingError(str(cause).splitlines()[0]) from None
    return out


def save_transform(directory: Path, transform: FittedTransform) -> Path:
    """``preprocess.json``: what every site applied, to apply to new data the same way."""
    path = directory / "preprocess.json"
    path.write_text(transform.model_dump_json(indent=1))
    return path


def load_transform(directory: Path) -> FittedTransform | None:
    path = directory / "preprocess.json"
    return FittedTransform.model_validate_json(path.read_text()) if path.exists() else None


def scale_warning(infos: list[dict[str, Any]]) -> str | None:
    """One warning naming the widest and narrowest feature columns when raw table scales
    differ by more than :data:`SCALE_WARNING_RATIO` across the sites, else None."""
    tables = [i for i in infos if i.get("feature_scales") is not None and len(i["feature_scales"])]
    if not tables:
        return None
    names = list(tables[0]["feature_names"])
    scales = np.max([np.asarray(i["feature_scales"], np.float64) for i in tables
                     if list(i["feature_names"]) == names], axis=0)
    positive = scales > 0
    if positive.sum() < 2 or scales[positive].max() <= SCALE_WARNING_RATIO * scales[positive].min():
        return None
    order = np.argsort(scales)
    widest = [f"{names[i]} (up to {scales[i]:.4g})" for i in order[::-1][:3]]
    narrowest = [f"{names[i]} (up to {scales[i]:.4g})" for i in order if scales[i] > 0][:3]
    return (f"feature scales differ by {scales[positive].max() / scales[positive].min():.0f}x across the "
            f"sites' tables: widest {', '.join(widest)}; narrowest {', '.join(narrowest)}. A model on raw "
            "units often learns only the majority class: add `preprocess: {standardize: true}` to fit one "
            "scaling from every site's statistics")
