"""``cluster.yaml`` passes Ray's own cluster-launcher validation (what ``ray up`` runs)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def _load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_is_a_valid_local_provider_config():
    config = _load()
    assert config["provider"]["type"] == "local"
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)  # raises on any schema violation
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_every_node_installs_fedray_and_gets_the_auth_token():
    config = _load()
    assert any("pip install" in cmd and "fedray" in cmd for cmd in config["setup_commands"])
    assert config["file_mounts"]["~/fedray"] == "."
    assert "~/.ray/auth_token" in config["file_mounts"]
    for cmd in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if cmd.startswith("RAY_AUTH_MODE") or "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd


def test_commented_cloud_example_is_valid_too():
    """The AWS block in the comments, swapped in as its header says, also validates."""
    text = CLUSTER_YAML.read_text()
    block = text.split("# CLOUD-EXAMPLE-START\n")[1].split("# CLOUD-EXAMPLE-END")[0]
    cloud = yaml.safe_load("\n".join(line.removeprefix("# ") for line in block.splitlines()))
    config = _load()
    for key in ("provider", "auth", "min_workers", "max_workers"):
        config.pop(key)
    config.update(cloud)
    validate_config(prepare_config(config))


def test_validation_really_rejects_a_broken_config():
    config = _load()
    config["setup_command"] = ["pip install fedray"]  # a typo of setup_commands
    with pytest.raises(Exception, match="setup_command"):
        validate_config(prepare_config(config))
