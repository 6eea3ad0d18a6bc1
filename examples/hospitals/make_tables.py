"""Write five hospital tables and one evaluation table from scikit-learn's bundled
Wisconsin breast cancer data (569 tumours, 30 measurements, no download needed).

Usage: ``python examples/hospitals/make_tables.py [out_dir]`` (default: this folder).

The point is data shaped like what hospitals really hold, so that federated
preprocessing has something to do: raw clinical units (0.001 to 4,000, never scaled),
a categorical ``scanner`` column whose values and calibration differ by site (some
values only some sites have), a ``referral`` column mildly related to the label,
about 5% of the measurements missing, and label skew across the sites. Everything is
seeded, so the same command writes the same files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

SEED = 0
MISSING_RATE = 0.05
SCANNERS = ["GE", "Siemens", "Philips", "Canon", "Hologic"]
# Per-site scanner mix; Canon is only at sites 2-3, Hologic only at site 4.
SCANNER_MIX = np.array([
    [0.7, 0.3, 0.0, 0.0, 0.0],
    [0.2, 0.6, 0.2, 0.0, 0.0],
    [0.1, 0.2, 0.4, 0.3, 0.0],
    [0.3, 0.0, 0.3, 0.4, 0.0],
    [0.2, 0.2, 0.0, 0.0, 0.6],
])
# Each scanner reads texture a little differently: a per-site feature shift.
TEXTURE_GAIN = {"GE": 1.00, "Siemens": 1.06, "Philips": 0.95, "Canon": 1.10, "Hologic": 0.97}
REFERRALS = ["gp", "screening", "specialist"]
REFERRAL_MIX = {1: [0.30, 0.30, 0.40], 0: [0.40, 0.45, 0.15]}  # by diagnosis
# Which site a training tumour goes to, by diagnosis: sites 0-1 see mostly malignant
# cases (referral centres), sites 3-4 mostly benign ones (screening clinics).
SITE_MIX = {1: [0.35, 0.30, 0.15, 0.10, 0.10], 0: [0.08, 0.10, 0.20, 0.30, 0.32]}


def load_frame() -> pd.DataFrame:
    """The bundled data as a frame with snake_case columns and ``diagnosis`` 1 = malignant
    (scikit-learn codes malignant as 0; clinical tables usually flag the positive class)."""
    bunch = load_breast_cancer()
    columns = [str(name).replace(" ", "_") for name in bunch.feature_names]
    frame = pd.DataFrame(bunch.data, columns=columns)
    frame["diagnosis"] = 1 - bunch.target
    return frame


def add_site_columns(frame: pd.DataFrame, mix: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """Add ``scanner`` (drawn from ``mix``, one row of probabilities per row of the frame,
    with its texture calibration applied) and ``referral`` (drawn by diagnosis)."""
    frame = frame.copy()
    scanner = np.array([rng.choice(SCANNERS, p=p) for p in mix])
    gain = np.array([TEXTURE_GAIN[s] for s in scanner])
    for column in [c for c in frame.columns if "texture" in c]:
        frame[column] = (frame[column] * gain).round(4 if "error" in column else 2)
    referral = [rng.choice(REFERRALS, p=REFERRAL_MIX[int(d)]) for d in frame["diagnosis"]]
    features = frame.drop(columns="diagnosis")
    return features.assign(scanner=scanner, referral=referral, diagnosis=frame["diagnosis"])


def punch_holes(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Blank about ``MISSING_RATE`` of the numeric measurements, completely at random."""
    frame = frame.copy()
    numeric = [c for c in frame.columns if c not in ("scanner", "referral", "diagnosis")]
    holes = rng.random((len(frame), len(numeric))) < MISSING_RATE
    frame[numeric] = frame[numeric].mask(holes)
    return frame


def make_tables(out_dir: Path) -> None:
    """Hold out a stratified 20% as ``test.csv`` first, then deal the rest to five sites."""
    rng = np.random.default_rng(SEED)
    frame = load_frame()
    train, test = train_test_split(frame, test_size=0.2, stratify=frame["diagnosis"], random_state=SEED)
    site = np.array([rng.choice(5, p=SITE_MIX[int(d)]) for d in train["diagnosis"]])
    out_dir.mkdir(parents=True, exist_ok=True)
    for k in range(5):
        rows = train[site == k].reset_index(drop=True)
        table = punch_holes(add_site_columns(rows, SCANNER_MIX[[k] * len(rows)], rng), rng)
        table.to_csv(out_dir / f"site_{k}.csv", index=False, float_format="%.6g")
        print(f"site_{k}.csv: {len(table)} rows, {table['diagnosis'].mean():.0%} malignant")
    pooled_mix = np.tile(SCANNER_MIX.mean(axis=0), (len(test), 1))
    table = punch_holes(add_site_columns(test.reset_index(drop=True), pooled_mix, rng), rng)
    table.to_csv(out_dir / "test.csv", index=False, float_format="%.6g")
    print(f"test.csv: {len(table)} rows, {table['diagnosis'].mean():.0%} malignant")


if __name__ == "__main__":
    make_tables(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
