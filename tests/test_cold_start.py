"""A cold ``fedray run``: its imports load while its own Ray starts, that Ray starts none of
the processes a run never uses and leaves no process behind; and the ``fedray`` command
leaves the process without Python's teardown once its work is done."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from orchestrator.tools.cli import _import_behind, demo_config_path

ROOT = Path(__file__).resolve().parents[1]

COLD_RUN = """
import json, sys
import ray
from ray._private import ray_constants
from orchestrator.cluster import connect
from orchestrator.tools.cli import main

seen = {}
connect_ray, shutdown = connect.connect_ray, ray.shutdown

def spy_connect(config):
    started = connect_ray(config)
    seen["processes"] = [info.process for infos in ray._private.worker._global_node.all_processes.values()
                         for info in infos]
    started_here = ray._private.worker._global_node.all_processes
    seen["unused"] = [kind for kind in (ray_constants.PROCESS_TYPE_MONITOR, ray_constants.PROCESS_TYPE_DASHBOARD,
                                        ray_constants.PROCESS_TYPE_LOG_MONITOR) if kind in started_here]
    seen["metrics_agent_port"] = ray._private.worker._global_node.metrics_agent_port  # -1: none
    seen["logs"] = ray._private.worker._global_node.get_logs_dir_path()
    return started

def spy_shutdown(*args, **kwargs):
    seen["alive_before_shutdown"] = all(p.poll() is None for p in seen["processes"])
    return shutdown(*args, **kwargs)

connect.connect_ray, ray.shutdown = spy_connect, spy_shutdown
code = main(["run", sys.argv[1], "--out", sys.argv[2], *sys.argv[3:]])
for p in seen["processes"]:  # each of the run's Ray processes ends (reaped here, or already)
    p.wait(timeout=30)
import glob, os
driver_log = "".join(open(f).read() for f in glob.glob(f"{seen['logs']}/python-core-driver-*_{os.getpid()}.log"))
print(json.dumps({"code": code, "processes": len(seen["processes"]),
                  "alive_before_shutdown": seen["alive_before_shutdown"],
                  "initialized_after": ray.is_initialized(), "torch_imported": "torch" in sys.modules,
                  "unused": seen["unused"], "metrics_agent_port": seen["metrics_agent_port"],
                  "metrics_deps_imported": "ray.dashboard.optional_deps" in sys.modules,
                  "task_events_off": "Task Event Buffer is disabled" in driver_log}))
"""


@pytest.mark.parametrize("quiet", [True, False])
def test_a_cold_run_starts_and_stops_its_own_ray_leaves_no_process_and_imports_no_torch(tmp_path, quiet):
    config = {"name": "cold", "dataset": {"name": "digits"},
              "groups": [{"name": "site", "count": 2, "model": {"name": "mlp", "hidden": [8]},
                          "train": {"batch_size": 64}, "resources": {"num_cpus": 0.5}, "hosting": "pool"}],
              "stop": {"max_aggregations": 2}, "ray": {"num_cpus": 2}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-c", COLD_RUN, str(tmp_path / "c.yaml"), str(tmp_path / "run"),
                           *(["--quiet"] if quiet else [])],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = yaml.safe_load(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 0 and report["processes"] >= 2  # the GCS and the raylet
    assert report["alive_before_shutdown"]
    # a Ray for one run starts no API server or autoscaler monitor, and a log monitor only
    # where participants' output reaches this terminal (not under --quiet)
    assert report["unused"] == ([] if quiet else ["log_monitor"])
    # and its raylet's dashboard agent exports no metrics, which the driver never imports
    assert report["metrics_agent_port"] == -1
    assert not report["metrics_deps_imported"]
    assert report["task_events_off"]  # nor reports task events nothing could read (0.25 s at exit)
    assert not report["initialized_after"]
    assert not report["torch_imported"]  # pool workers evaluate too: the driver never needs torch
    assert (tmp_path / "run" / "history.parquet").exists()


def test_imports_behind_load_in_a_thread_and_a_failing_one_fails_again_where_it_is_used(tmp_path, monkeypatch):
    (tmp_path / "loads_fine.py").write_text("VALUE = 7\n")
    (tmp_path / "breaks_on_import.py").write_text("raise ValueError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    thread = _import_behind("breaks_on_import", "loads_fine")
    assert isinstance(thread, threading.Thread) and thread.daemon
    thread.join(timeout=30)
    assert sys.modules["loads_fine"].VALUE == 7  # the one after the failure still loaded
    assert "breaks_on_import" not in sys.modules
    with pytest.raises(ValueError, match="broken on purpose"):
        import breaks_on_import  # noqa: F401
    monkeypatch.delitem(sys.modules, "loads_fine")


ENTRY = """
import atexit, sys, threading, time
from orchestrator.tools import cli

class Finalized:
    def __del__(self):
        print("interpreter torn down", flush=True)

keep = Finalized()  # only Python's own teardown of this module prints it
atexit.register(lambda: print("exit handler ran", flush=True))
if sys.argv[1] == "with-thread":
    threading.Thread(target=time.sleep, args=(0.5,)).start()  # not a daemon: Python must wait for it
sys.argv = ["fedray", *sys.argv[2:]]
cli.entry()
"""


@pytest.mark.parametrize("thread", ["alone", "with-thread"])
def test_the_fedray_command_leaves_at_once_after_exit_handlers_unless_a_thread_lives(thread, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "strategy": {"name": "fedfoo"}}))
    for args, code in ((["validate", str(demo_config_path())], 0), (["validate", str(bad)], 2)):
        done = subprocess.run([sys.executable, "-c", ENTRY, thread, *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == code, done.stderr
        assert "exit handler ran" in done.stdout
        assert ("interpreter torn down" in done.stdout) == (thread == "with-thread")
        if code == 2:
            assert "unknown strategy 'fedfoo'" in done.stderr  # flushed before leaving
        else:
            assert "demo" in done.stdout



@pytest.mark.parametrize(("report", "preset", "during"), [(False, None, "0"), (True, None, None), (False, "1", "1")])
def test_task_events_are_off_while_ray_starts_unless_asked_for_or_set_by_the_user(monkeypatch, report, preset, during):
    from orchestrator.cluster.connect import TASK_EVENTS_ENV, _task_events

    if preset is None:
        monkeypatch.delenv(TASK_EVENTS_ENV, raising=False)
    else:
        monkeypatch.setenv(TASK_EVENTS_ENV, preset)
    with _task_events(report):
        assert os.environ.get(TASK_EVENTS_ENV) == during
    assert os.environ.get(TASK_EVENTS_ENV) == preset  # the caller's environment as it was
