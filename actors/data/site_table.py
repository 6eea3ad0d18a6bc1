"""A site's raw table for federated preprocessing: its schema and the statistics each
round of the fit asks for (:mod:`orchestrator.server.preprocessing` is the driver's half)."""

from __future__ import annotations

from typing import Any

import numpy as np

from actors.data import preprocess
from actors.data.load import site_frame
from actors.data.tables import DataError, feature_names, split_rows
from actors.spec.participant import ParticipantSpec


class SiteTable:
    """The raw table less the rows the site holds out as its test split: statistics that
    saw those rows would leak them into the transform it is later tested through."""

    def __init__(self, spec: ParticipantSpec) -> None:
        assert spec.preprocess is not None
        self.spec = spec
        frame, columns, self.where = site_frame(spec)
        train, _ = split_rows(len(frame), spec.data.test_fraction, spec.seed)
        self.frame = frame.iloc[np.sort(train)]
        self.features = feature_names(frame, columns, self.where)

    def schema(self) -> dict[str, Any]:
        """Round 0, in the clear: numeric columns and categorical values."""
        try:
            return preprocess.site_schema(self.frame, self.features, self.spec.preprocess, self.where)
        except preprocess.PreprocessError as exc:
            raise DataError(str(exc)) from None

    def statistics(self, numeric: list[str], scales: list[float] | None = None,
                   means: list[float] | None = None) -> np.ndarray:
        """Round 1 (no ``scales``): each column's power-of-two magnitude, one-hot; round 2:
        counts and sums of the values times ``scales``; round 3: sums of squared scaled
        deviations from the scaled global ``means`` (see :mod:`actors.data.preprocess`)."""
        try:
            x = preprocess.numeric_block(self.frame, numeric, self.where)
        except preprocess.PreprocessError as exc:
            raise DataError(str(exc)) from None
        if scales is None:
            return preprocess.magnitudes(x)
        x = x * np.asarray(scales)
        return preprocess.sums(x) if means is None else preprocess.squared_deviations(x, np.asarray(means))
