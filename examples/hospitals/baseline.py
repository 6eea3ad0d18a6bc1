"""Reference numbers for the hospital tables: what a federated run should be compared with.

Usage: ``python examples/hospitals/baseline.py [table_dir]`` (default: this folder).

``central`` pools every site's rows in one place (what federation tries to match without
moving the rows); ``site_k`` trains on site k's rows alone (what each hospital gets
without federation). All are evaluated on ``test.csv``. The preprocessing is the one a
federated run would fit from global statistics: mean imputation and standardisation of
the measurements, one-hot ``scanner`` and ``referral``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

CATEGORICAL = ["scanner", "referral"]
LABEL = "diagnosis"


def make_model(numeric: list[str]):
    """Impute + standardise the measurements, one-hot the categoricals (a value a site
    never saw, such as another site's scanner, encodes as all zeros), then a logistic
    regression."""
    prep = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="mean"), StandardScaler()), numeric),
        ("cat", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
    ])
    return make_pipeline(prep, LogisticRegression(max_iter=2000))


def scores(model, test: pd.DataFrame) -> dict[str, float]:
    """Accuracy, macro-F1 and AUROC (malignant = 1 the positive class) on the test table."""
    x, y = test.drop(columns=LABEL), test[LABEL]
    pred = model.predict(x)
    return {
        "accuracy": accuracy_score(y, pred),
        "macro_f1": f1_score(y, pred, average="macro"),
        "auroc": roc_auc_score(y, model.predict_proba(x)[:, 1]),
    }


def main(table_dir: Path) -> None:
    """Print the central and per-site scores, and the sites' mean; the README quotes them."""
    sites = [pd.read_csv(p) for p in sorted(table_dir.glob("site_*.csv"))]
    test = pd.read_csv(table_dir / "test.csv")
    numeric = [c for c in test.columns if c not in [*CATEGORICAL, LABEL]]
    rows = []
    pooled = pd.concat(sites, ignore_index=True)
    central = make_model(numeric).fit(pooled.drop(columns=LABEL), pooled[LABEL])
    rows.append({"model": "central", "train_rows": len(pooled), **scores(central, test)})
    for k, site in enumerate(sites):
        local = make_model(numeric).fit(site.drop(columns=LABEL), site[LABEL])
        rows.append({"model": f"site_{k}", "train_rows": len(site), **scores(local, test)})
    table = pd.DataFrame(rows).set_index("model")
    table.loc["local mean"] = table.iloc[1:].mean()
    print(f"LogisticRegression trained on site_*.csv, evaluated on test.csv ({len(test)} rows)")
    print(table.to_string(float_format="%.3f"))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
