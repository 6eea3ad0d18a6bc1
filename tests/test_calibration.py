"""The calibration file: written and read back, refused when malformed, priced between rows."""

from __future__ import annotations

import json

import pytest

from orchestrator.cluster.calibration import Calibration, CalibrationError, Measurement, Overheads


def _row(group: str = "hospital", cpus: float = 1.0, spp: float = 0.4, fixed: float = 1.0,
         gpus: float = 0.0, batched: bool = False, memory: float = 3e8) -> Measurement:
    return Measurement(group, cpus, gpus, batched, spp, fixed, memory, 0.0, 1000)


def _calibration() -> Calibration:
    # hospital: 1 CPU 0.4 s/sample + 1 s, 4 CPUs 0.1 s/sample + 0.25 s (both exactly a + b/cpus, a=0)
    return Calibration({"hostname": "lab", "cpus": 2}, [
        _row(cpus=4, spp=0.1, fixed=0.25, memory=5e8), _row(cpus=1, spp=0.4, fixed=1.0),
        _row(gpus=0.5, spp=0.01, fixed=2.0), _row(gpus=0.5, spp=0.002, fixed=2.0, batched=True),
        _row("clinic", cpus=0.5, spp=0.02, fixed=0.1)])


def test_save_then_load_gives_the_same_rows_and_machine(tmp_path) -> None:
    path = tmp_path / "calibration.json"
    cal = _calibration()
    cal.save(path)
    data = json.loads(path.read_text())
    assert data["version"] == 2 and data["machine"] == {"hostname": "lab", "cpus": 2}
    again = Calibration.load(path)
    assert again.rows == cal.rows and again.machine == cal.machine and again.overheads == cal.overheads
    assert again.groups() == ["clinic", "hospital"]


def test_a_measured_allocation_costs_exactly_its_row() -> None:
    cal = _calibration()
    assert cal.task_seconds("hospital", num_cpus=1, num_gpus=0, samples=100) == pytest.approx(41.0)
    assert cal.task_seconds("hospital", num_cpus=4, num_gpus=0, samples=100) == pytest.approx(10.25)
    assert cal.task_seconds("hospital", 1, 0.5, 100) == pytest.approx(3.0)
    assert cal.task_seconds("hospital", 1, 0.5, 100, batched=True) == pytest.approx(2.2)


def test_between_measured_cpus_the_cost_follows_a_plus_b_over_cpus() -> None:
    cal = _calibration()
    # through (1, 41) and (4, 10.25) with t = a + b / cpus: b = 41, a = 0, so 2 CPUs: 20.5
    assert cal.task_seconds("hospital", num_cpus=2, num_gpus=0, samples=100) == pytest.approx(20.5)
    # not the straight line in CPUs, which would say 30.75
    assert cal.task_seconds("hospital", 3, 0, 100) == pytest.approx(41 / 3)


def test_outside_the_measured_cpus_the_nearest_row_prices_no_extrapolated_speedup() -> None:
    cal = _calibration()
    assert cal.task_seconds("hospital", num_cpus=16, num_gpus=0, samples=100) == pytest.approx(10.25)
    assert cal.task_seconds("hospital", num_cpus=0.5, num_gpus=0, samples=100) == pytest.approx(41.0)


def test_an_unmeasured_gpu_share_borrows_the_nearest_measured_share() -> None:
    cal = _calibration()
    assert cal.task_seconds("hospital", 1, 0.25, 100) == cal.task_seconds("hospital", 1, 0.5, 100)




def test_uncalibrated_group_or_regime_is_a_clear_error() -> None:
    cal = _calibration()
    with pytest.raises(CalibrationError, match="'lab' was never calibrated.*clinic, hospital"):
        cal.task_seconds("lab", 1, 0, 10)
    with pytest.raises(CalibrationError, match="'clinic' was not calibrated on a GPU"):
        cal.task_seconds("clinic", 1, 0.25, 10)
    with pytest.raises(CalibrationError, match="'hospital' was not calibrated on CPUs only batched"):
        cal.task_seconds("hospital", 1, 0, 10, batched=True)


def test_load_refuses_another_version_and_rows_missing_fields(tmp_path) -> None:
    path = tmp_path / "calibration.json"
    _calibration().save(path)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "version": 3}))
    with pytest.raises(CalibrationError, match="version 3 is not one this fedray reads"):
        Calibration.load(path)
    del data["rows"][1]["fixed_seconds"], data["rows"][1]["peak_memory_bytes"]
    data["rows"][1]["speed"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError,
                       match="row 1: missing fixed_seconds, peak_memory_bytes; unknown speed"):
        Calibration.load(path)
    path.write_text(json.dumps({"version": 1, "rows": []}))
    with pytest.raises(CalibrationError, match="missing machine"):
        Calibration.load(path)
    with pytest.raises(CalibrationError, match=f"{tmp_path / 'nowhere.json'}: cannot read it .*fedray profile"):
        Calibration.load(tmp_path / "nowhere.json")


def test_overheads_round_trip_and_a_version_1_file_reads_as_none(tmp_path) -> None:
    path = tmp_path / "calibration.json"
    cal = Calibration({}, _calibration().rows, Overheads(0.01, 0.007, 0.004, 4))
    cal.save(path)
    assert Calibration.load(path).overheads == Overheads(0.01, 0.007, 0.004, 4)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({"version": 1, "machine": {}, "rows": data["rows"]}))  # written before overheads
    assert Calibration.load(path).overheads == Overheads()
    path.write_text(json.dumps({**data, "overheads": {"task_seconds": 0.01, "per_round": 1}}))
    with pytest.raises(CalibrationError, match="overheads: unknown per_round"):
        Calibration.load(path)
    with pytest.raises(CalibrationError, match="overheads must be >= 0"):
        Calibration({}, [], Overheads(task_seconds=-0.1))


def test_a_run_config_naming_a_missing_calibration_is_refused_naming_the_field_and_file(tmp_path) -> None:
    from conftest import digits_config

    from orchestrator.config import ConfigError, load_config

    missing = tmp_path / "nowhere.json"
    with pytest.raises(ConfigError, match=f"calibration.*{missing}: cannot read it"):
        load_config(digits_config(clock="simulated", calibration=str(missing)))


def test_a_group_measured_twice_at_one_allocation_is_refused() -> None:
    with pytest.raises(CalibrationError, match="measured twice at num_cpus=1"):
        Calibration({}, [_row(), _row(spp=0.3)])
