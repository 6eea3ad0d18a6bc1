"""``fedray run --quiet`` prints where the results are and errors, nothing else: no
progress, no notices, and no participant output even when many participants fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from tests.site_loader import blobs

ROOT = Path(__file__).resolve().parents[1]


def test_quiet_prints_only_where_the_results_are(ray_session, tmp_path):
    """The run joins the session's Ray (``ray.address``), as on a cluster: starting one of
    its own would only cost seconds here."""
    config = {
        "name": "quiet", "ray": {"address": ray_session.get_runtime_context().gcs_address}, "groups": [{
            "name": "site", "count": 6, "hosting": "pool", "workers": 1,
            "data": {"source": "python", "factory": "tests.site_loader:blobs_except_odd", "num_classes": 3},
            "model": {"name": "mlp", "hidden": [8]}, "train": {"batch_size": 16},
            "resources": {"num_cpus": 1}}],
        "evaluation": {"path": str(tmp_path / "test.csv")}, "schedule": {"min_participants": 1},
        "stop": {"max_aggregations": 2},
    }
    x, y = blobs("test", 100, "held-out", rows=60)
    pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])]).assign(label=y).to_csv(tmp_path / "test.csv", index=False)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "orchestrator.tools.cli", "run", str(tmp_path / "c.yaml"),
                           "--quiet", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"results in {out}/\n"
    assert "cannot read its records" not in done.stderr  # the three failures are in the history
    history = pd.read_parquet(out / "history.parquet")
    assert (history.event == "failure").sum() == 3
