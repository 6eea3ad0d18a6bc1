"""The ``fedray`` command line: user mistakes exit 2 with one clear message, no traceback;
and it starts without importing what the command or the config does not use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import digits_config

from orchestrator.tools.cli import demo_config_path, main


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
    from orchestrator.tools import submit

    submitted = []

    def fake_submit(config_path, address, out, echo=print, timeout_s=None):
        submitted.append((config_path, address, out))
        return {"final_accuracy": 0.9, "stop_reason": "max_aggregations"}

    monkeypatch.setattr(submit, "submit", fake_submit)
    out = tmp_path / "out"
    assert main(["submit", "--address", "http://127.0.0.1:8265", "--out", str(out)]) == 0
    assert submitted == [(demo_config_path(), "http://127.0.0.1:8265", out)]
    assert "final_accuracy=0.9" in capsys.readouterr().out


# -- a fast start: modules load only when the command or the config needs them ----------

HEAVY = ("torch", "ray", "pandas", "sklearn", "scipy", "opacus", "cryptography", "torch._dynamo", "sympy")


def imported_after(code: str) -> set[str]:
    """Which of :data:`HEAVY` a fresh interpreter has imported after running ``code``
    (a subprocess, so this test process's own imports do not count)."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split("\n")[-2].split())


def test_help_and_validate_import_neither_torch_nor_ray():
    help_call = ("from orchestrator.tools.cli import main\ntry:\n    main(['--help'])\n"
                 "except SystemExit:\n    pass")
    assert imported_after(help_call) == set()
    example = Path(__file__).parents[1] / "examples" / "pool.yaml"
    assert imported_after(f"from orchestrator.tools.cli import main\nassert main(['validate', {str(example)!r}]) == 0") == set()


def test_commands_listed_without_their_module_show_that_modules_help_line():
    from orchestrator.tools.cli import MODULE_COMMANDS, build_parser

    listed = build_parser().format_help()
    for name in MODULE_COMMANDS:
        assert build_parser(name).format_help() == listed, name
    assert build_parser("submit").parse_args(["submit", "--address", "http://h:8265"]).address == "http://h:8265"


def test_builtin_model_options_match_the_factories():
    """Config validation reads them from actors.spec so that it need not import torch."""
    from actors.spec.training import BUILTIN_MODEL_OPTIONS
    from actors.training.models import MODELS, factory_options

    assert {name: factory_options(f) for name, f in MODELS.items()} == BUILTIN_MODEL_OPTIONS


def test_a_plain_digits_fedavg_participant_imports_only_torch():
    """No opacus (DP-SGD), cryptography (secure aggregation), pandas (file data) or
    scikit-learn (digits is read from its bundled file) unless the config uses them, and
    no torch._dynamo (the local optimizers are fedray's own: actors/training/optimizers.py)."""
    assert imported_after("import actors.participant.participant") == {"torch"}
    train_one_task = """
from actors.participant.participant import Participant
from actors.spec.data import DatasetSpec, PartitionData
from actors.spec.training import ModelSpec, TrainSpec
from actors.spec.participant import ParticipantSpec
from strategies.types import GlobalState, Instructions
spec = ParticipantSpec(name="site-0", group="site", index_in_group=0, seed=0, model=ModelSpec(),
                       data=PartitionData(), train=TrainSpec(), dataset=DatasetSpec(),
                       partition_index=0, num_partitions=4)
p = Participant(spec)
p.train(GlobalState(0, p.initial_parameters(), p.describe()["layout"]), Instructions(0, seed=1))
"""
    assert imported_after(train_one_task) - {"ray"} == {"torch"}  # ray: only to ask for its GPU ids


def test_training_participants_together_imports_no_torch_dynamo_nor_sympy():
    """Batched training's first step imports neither torch._dynamo (1.2-1.5 s on 2 cores;
    its gradients come from autograd over the vmapped forward, not torch.func.grad) nor
    sympy (0.4-0.5 s; its cross-entropy is no nll_loss decomposition under vmap)."""
    train_two_together = """
import torch
from actors.spec.training import TrainSpec
from actors.training.batched import train_batched
from actors.training.models import build_model
models = [build_model("mlp", {"hidden": [8]}, (4,), 3) for _ in range(2)]
x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
train_batched(models, [x, x], [y, y], TrainSpec(batch_size=4), [0, 1], 1)
"""
    assert not {"torch._dynamo", "sympy"} & imported_after(train_two_together)


def test_digits_read_from_the_bundled_file_equal_scikit_learns_loader():
    from sklearn.datasets import load_digits

    from actors.data.load import _digits_table

    pixels, labels = _digits_table()
    bunch = load_digits()
    np.testing.assert_array_equal(pixels, bunch.data)
    np.testing.assert_array_equal(labels, bunch.target)


@pytest.mark.parametrize(("participants", "says"), [
    (100, "could not draw a Dirichlet(0.5) split of 1438 samples into 100 parts with at least 7 samples each "
          "(min_size 10 capped at half the mean part size) in 1000 draws; set dataset.partition.min_size below 7 "
          "(it is 10), a larger dataset.partition.alpha (now 0.5; larger is more even), fewer than 100 "
          "participants or dataset.partition.kind: iid"),
    (1000, "a Dirichlet(0.5) split of 1438 samples into 1000 parts (under 2 per part on average) leaves parts "
           "empty; set fewer than 1000 participants or dataset.partition.kind: iid"),
])
def test_validate_and_run_refuse_a_partition_that_cannot_work_before_ray(tmp_path, capsys, participants, says):
    """``validate`` said "valid" and ``run`` failed after Ray started (100 participants), or
    243 of 1,000 got no rows and all 1,000 failed, each printed twice."""
    dataset = {"name": "digits", "partition": {"kind": "dirichlet", "alpha": 0.5}}
    group = {**digits_config()["groups"][0], "count": participants, "hosting": "pool"}
    path = write(tmp_path / "skewed.yaml", digits_config(dataset=dataset, groups=[group]))
    start = time.perf_counter()
    assert main(["validate", str(path)]) == 2
    seconds = time.perf_counter() - start  # measured at load 8 on 2 cores: 1.5 s and 0.02 s
    out, err = capsys.readouterr()
    assert err == f"fedray: {path}: dataset.partition: {says}\n" and out == ""
    assert seconds < 10  # loose on a shared machine; the 1,000 failing draws alone took 9 s before
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert err == f"fedray: dataset.partition: {says}\n" and not (tmp_path / "out").exists()


def test_run_with_an_address_nobody_answers_on_exits_2_naming_the_field():
    """``ray.init`` would wait minutes at such an address before failing with a traceback."""
    done = subprocess.run([sys.executable, "-m", "orchestrator.tools.cli", "run", "--quiet", "--address", "127.0.0.1:1"],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "fedray: ray.address '127.0.0.1:1': no Ray cluster at 127.0.0.1:1: nothing answers there" in done.stderr
    assert "ray start --head" in done.stderr and "Traceback" not in done.stderr


def test_only_a_host_and_port_is_probed_before_joining():
    from orchestrator.cluster.connect import unreachable

    assert unreachable("auto") is None and unreachable("ray://127.0.0.1:1") is None  # Ray resolves these
    assert unreachable("127.0.0.1:1").startswith("no Ray cluster at 127.0.0.1:1")
