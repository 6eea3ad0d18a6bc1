"""Reference numbers for the traffic tables: what a federated run should be compared with.

Usage: ``python examples/traffic/baseline.py [table_dir]`` (default: this folder).

Two tables. First, central models trained on every city's rows pooled, evaluated on the
pooled later period in ``test.csv``. Second, per city, on the 20% of that city's rows that
fedray holds out as the site's own test split in ``examples/traffic.yaml`` (run seed 0): a
local-only model trained on the other 80% of that city's rows, against central models
trained on all cities' 80% parts.

fedray's hold-out rule: participant k of a run (counted over the config's groups in
order) has seed ``config.seed * 100003 + k`` and holds out the first ``round(0.2 n)`` rows
of ``numpy.random.default_rng(seed).permutation(n)``. At run seed 0, city k uses seed k,
so each city has its own hold-out rows.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.compose import TransformedTargetRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

TARGET = "flow"
TEST_FRACTION, RUN_SEED = 0.2, 0


def participant_seed(index: int, run_seed: int = RUN_SEED) -> int:
    """The seed fedray gives participant ``index`` of a run seeded ``run_seed``."""
    return run_seed * 100_003 + index


def make_model(kind: str):
    """Standardised features, then Ridge or a one-hidden-layer MLP; the MLP also learns
    a standardised target (flows in the thousands would swamp its initialisation)."""
    if kind == "ridge":
        return make_pipeline(StandardScaler(), Ridge())
    mlp = make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(32,), max_iter=500, random_state=0))
    return TransformedTargetRegressor(regressor=mlp, transformer=StandardScaler())


def fit(kind: str, rows: pd.DataFrame):
    """A fresh model of ``kind`` fitted on ``rows`` (every column but the target is a feature)."""
    return make_model(kind).fit(rows.drop(columns=TARGET), rows[TARGET])


def hold_out(rows: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test): the 20% a fedray participant with this seed keeps as its test split."""
    order = np.random.default_rng(seed).permutation(len(rows))
    n_test = int(round(TEST_FRACTION * len(rows)))
    return rows.iloc[order[n_test:]], rows.iloc[order[:n_test]]


def central_table(cities: list[pd.DataFrame], test: pd.DataFrame) -> pd.DataFrame:
    """Central Ridge and MLP on all city rows, scored on ``test.csv``."""
    pooled = pd.concat(cities, ignore_index=True)
    x, y = test.drop(columns=TARGET), test[TARGET]
    rows = {}
    for kind in ("ridge", "mlp"):
        pred = fit(kind, pooled).predict(x)
        rows[f"central {kind}"] = {"r2": r2_score(y, pred), "mse": mean_squared_error(y, pred),
                                   "mae": mean_absolute_error(y, pred)}
    return pd.DataFrame(rows).T


def per_city_table(cities: list[pd.DataFrame]) -> pd.DataFrame:
    """Per city R^2 on its own held-out 20%: local-only models against central ones."""
    splits = [hold_out(city, participant_seed(k)) for k, city in enumerate(cities)]
    pooled = pd.concat([train for train, _ in splits], ignore_index=True)
    central = {kind: fit(kind, pooled) for kind in ("ridge", "mlp")}
    rows = {}
    for k, (train, test) in enumerate(splits):
        x, y = test.drop(columns=TARGET), test[TARGET]
        row = {"train_rows": len(train), "test_rows": len(test)}
        for kind in ("ridge", "mlp"):
            row[f"local {kind} r2"] = r2_score(y, fit(kind, train).predict(x))
            row[f"central {kind} r2"] = r2_score(y, central[kind].predict(x))
        rows[f"city_{k}"] = row
    table = pd.DataFrame(rows).T
    table.loc["mean"] = table.mean()
    return table.astype({"train_rows": int, "test_rows": int})


def main(table_dir: Path) -> None:
    """Print both tables; the README quotes them."""
    cities = [pd.read_csv(p) for p in sorted(table_dir.glob("city_[0-9]*.csv"))]
    test = pd.read_csv(table_dir / "test.csv")
    warnings.filterwarnings("ignore", category=ConvergenceWarning)  # max_iter=500 is the spec
    print(f"Central models trained on city_*.csv ({sum(map(len, cities))} rows), "
          f"evaluated on test.csv ({len(test)} rows)")
    print(central_table(cities, test).to_string(float_format="%.3f"))
    print(f"\nPer city, R^2 on the {TEST_FRACTION:.0%} of its own rows that fedray holds out "
          f"(city k: seed {RUN_SEED} * 100003 + k)")
    print(per_city_table(cities).to_string(float_format="%.3f"))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
