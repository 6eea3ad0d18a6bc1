"""The ``fedray`` command line: user mistakes exit 2 with one clear message, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml
from conftest import digits_config

from orchestrator.cli import demo_config_path, main


def write(path, config: dict):
    path.write_text(yaml.safe_dump(config))
    return path


def test_missing_config_file_exits_2_with_the_path(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["run", str(missing)]) == 2
    out, err = capsys.readouterr()
    assert err.strip() == f"fedray: config file not found: {missing}"
    assert "Traceback" not in out + err


def test_bad_field_exits_2_and_names_it(tmp_path, capsys):
    config = digits_config()
    config["groups"][0]["resources"]["num_cpu"] = 2
    path = write(tmp_path / "bad.yaml", config)
    for command in ("validate", "run"):
        assert main([command, str(path)]) == 2
        out, err = capsys.readouterr()
        assert err.startswith(f"fedray: invalid settings in {path}:\n")
        assert "groups[0].resources.num_cpu: unknown field; allowed:" in err
        assert "Traceback" not in out + err


def test_run_with_a_missing_participant_file_stops_before_ray(tmp_path, capsys):
    config = digits_config()
    config["groups"][0]["count"] = 2
    config["groups"][0]["data"] = {"source": "file", "path": str(tmp_path / "clinic_{index}.csv"),
                                   "num_classes": 10}
    (tmp_path / "clinic_0.csv").write_text("a,label\n1,0\n")
    path = write(tmp_path / "files.yaml", config)
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert err == (f"fedray: missing data:\n  participant site-1: data file not found: "
                   f"{tmp_path / 'clinic_1.csv'}\n")
    assert not (tmp_path / "out").exists()
    assert "Traceback" not in out + err


def test_validate_accepts_the_demo_and_names_it(capsys):
    assert main(["validate"]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("built-in demo: valid (8 participants in 1 groups, fedavg, sync)")
    assert demo_config_path().exists()


@pytest.mark.skipif(shutil.which("fedray") is None, reason="console script not installed")
def test_console_script_reports_without_traceback(tmp_path):
    path = write(tmp_path / "bad.yaml", digits_config(strategy={"name": "fedfoo"}))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([shutil.which("fedray"), "validate", str(path)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "strategy: unknown strategy 'fedfoo'; known strategies:" in done.stderr
    assert "fedavg" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_submit_without_a_config_submits_the_demo_like_run(tmp_path, monkeypatch, capsys):
    """``fedray run`` falls back to the built-in demo; ``fedray submit`` must too (the job
    itself is replaced here: what matters is which config it is given)."""
    from orchestrator import submit

    submitted = []

    def fake_submit(config_path, address, out, echo=print, timeout_s=None):
        submitted.append((config_path, address, out))
        return {"final_accuracy": 0.9, "stop_reason": "max_aggregations"}

    monkeypatch.setattr(submit, "submit", fake_submit)
    out = tmp_path / "out"
    assert main(["submit", "--address", "http://127.0.0.1:8265", "--out", str(out)]) == 0
    assert submitted == [(demo_config_path(), "http://127.0.0.1:8265", out)]
    assert "final_accuracy=0.9" in capsys.readouterr().out
