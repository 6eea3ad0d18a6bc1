"""Config validation: every user mistake names the field path and what is allowed."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from conftest import digits_config

from orchestrator.config import (
    AsyncSchedule,
    BufferedSchedule,
    ConfigError,
    RunConfig,
    SyncSchedule,
    load_config,
    missing_data_files,
)
from orchestrator.loop.schedules import Async, Buffered


def broken(edit) -> dict:
    config = copy.deepcopy(digits_config())
    edit(config)
    return config


def error_of(source) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(source)
    return str(info.value)


BAD_CONFIGS = {
    "unknown-field": (
        lambda c: c["groups"][0]["resources"].update(num_cpu=1),
        r"groups\[0\]\.resources\.num_cpu: unknown field; "
        r"allowed: (\w+, )*memory, (\w+, )*num_cpus, num_gpus, (\w+, )*resources\b",
    ),
    "unknown-top-level-field": (
        lambda c: c.update(rounds=5),
        r"rounds: unknown field; allowed: (\w+, )*dataset, evaluation, groups, (\w+, )*stop, strategy\b",
    ),
    "bad-enum": (
        lambda c: c.update(schedule={"mode": "sometimes"}),
        r"schedule\.mode: Input should be 'sync', 'buffered' or 'async' \(got 'sometimes'\)",
    ),
    "buffer-size-under-sync": (
        lambda c: c.update(schedule={"mode": "sync", "buffer_size": 2}),
        r"schedule\.buffer_size: unknown field for mode 'sync'; allowed: adaptive_local_work, "
        r"clients_per_round, deadline_s, late_updates, (\w+, )*mode, over_select, (\w+, )*task_timeout_s$",
    ),
    "buffer-size-with-mode-omitted": (
        lambda c: c.update(schedule={"buffer_size": 2}),
        r"schedule\.buffer_size: unknown field for mode 'sync'; allowed: (\w+, )*clients_per_round\b",
    ),
    "alpha-under-buffered": (
        lambda c: c.update(schedule={"mode": "buffered", "alpha": 0.5}),
        r"schedule\.alpha: unknown field for mode 'buffered'; allowed: adaptive_local_work, buffer_size, "
        r"concurrency, (\w+, )*task_timeout_s$",
    ),
    "clients-per-round-under-async": (
        lambda c: c.update(schedule={"mode": "async", "clients_per_round": 2}),
        r"schedule\.clients_per_round: unknown field for mode 'async'; allowed: adaptive_local_work, "
        r"alpha, concurrency\b",
    ),
    "bad-data-source": (
        lambda c: c["groups"][0].update(data={"source": "ftp"}),
        r"groups\[0\]\.data\.source: Input should be 'partition', 'file', 'python' or 'images' \(got 'ftp'\)",
    ),
    "bad-partition-kind": (
        lambda c: c["dataset"]["partition"].update(kind="zipf"),
        r"dataset\.partition\.kind: Input should be 'iid', 'dirichlet' or 'shards' \(got 'zipf'\)",
    ),
    "unknown-strategy": (
        lambda c: c.update(strategy={"name": "fedfoo"}),
        r"strategy: unknown strategy 'fedfoo'; known strategies: (\w+, )*fedavg\b",
    ),
    "bad-strategy-option": (
        lambda c: c.update(strategy={"name": "fedavg", "server_rate": 2}),
        r"strategy: strategy 'fedavg' has no option\(s\) \['server_rate'\]; allowed: server_lr",
    ),
    "unknown-model": (
        lambda c: c["groups"][0].update(model={"name": "resnet999"}),
        r"groups\[0\]\.model: unknown model 'resnet999'; known models: cnn, .*mlp.*"
        r"or 'package\.module:factory'",
    ),
    "bad-model-option": (
        lambda c: c["groups"][0].update(model={"name": "mlp", "depth": 3}),
        r"groups\[0\]\.model: model 'mlp' has no option\(s\) \['depth'\]; allowed: dropout, hidden",
    ),
    "unloadable-model-factory": (
        lambda c: c["groups"][0].update(model={"name": "nosuch.module:build"}),
        r"groups\[0\]\.model: cannot load model factory 'nosuch\.module:build': No module named 'nosuch'",
    ),
    "out-of-range-number": (
        lambda c: c["groups"][0]["train"].update(lr=-1),
        r"groups\[0\]\.train\.lr: Input should be greater than 0 \(got -1\)",
    ),
    "missing-dataset-for-partition-data": (
        lambda c: c.pop("dataset"),
        r"groups with data source 'partition' need a top-level 'dataset'",
    ),
    "file-data-without-num-classes": (
        lambda c: c["groups"][0].update(data={"source": "file", "path": "x_{index}.csv"}),
        r"groups\[0\]\.data\.num_classes: required for classification",
    ),
    "file-data-with-path-and-paths": (
        lambda c: c["groups"][0].update(data={"source": "file", "path": "a.csv", "paths": ["b.csv"],
                                              "num_classes": 10}),
        r"groups\[0\]\.data: give exactly one of 'path' \(a template\) or 'paths' \(a list\)",
    ),
    "clients-per-round-above-participants": (
        lambda c: c.update(schedule={"clients_per_round": 9}),
        r"schedule\.clients_per_round=9 exceeds the 4 participants",
    ),
    "duplicate-group-names": (
        lambda c: c["groups"].append(copy.deepcopy(c["groups"][0])),
        r"group names must be unique; repeated: \['site'\]",
    ),
    "no-stop-limit": (
        lambda c: c.update(stop={"max_aggregations": None}),
        r"stop: set at least one of max_aggregations, max_updates, max_wall_s",
    ),
    "missing-groups": (
        lambda c: c.pop("groups"),
        r"groups: required field is missing",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_names_the_field_and_what_is_allowed(name):
    edit, expected = BAD_CONFIGS[name]
    message = error_of(broken(edit))
    assert message.startswith("invalid settings in the config:\n"), message
    assert re.search(expected, message), message
    assert "Traceback" not in message and "pydantic" not in message.lower()


def test_every_mistake_is_reported_at_once():
    def two_mistakes(c):
        c["groups"][0]["train"]["lr"] = 0
        c["groups"][0]["train"]["batchsize"] = 8

    message = error_of(broken(two_mistakes))
    assert "groups[0].train.lr" in message and "groups[0].train.batchsize: unknown field" in message


def test_good_config_fills_every_default():
    config = load_config(digits_config())
    assert isinstance(config, RunConfig)
    assert config.num_participants == 4
    assert config.groups[0].resources.num_cpus == 0.5
    assert config.strategy.build().name == "fedavg"
    assert config.schedule == SyncSchedule()


@pytest.mark.parametrize(("schedule", "cls"), [
    ({"deadline_s": 2.0}, SyncSchedule),  # mode omitted means sync
    ({"mode": "sync", "late_updates": "carry", "max_staleness": 2}, SyncSchedule),
    ({"mode": "buffered", "buffer_size": 2, "concurrency": 3}, BufferedSchedule),
    ({"mode": "async", "alpha": 0.3, "staleness": {"kind": "hinge"}}, AsyncSchedule),
])
def test_each_schedule_mode_has_its_own_model_and_survives_a_dump(schedule, cls):
    config = load_config(digits_config(schedule=schedule))
    assert type(config.schedule) is cls and config.schedule.mode == cls().mode
    # what the run directory's config.yaml holds must load again for --resume
    assert load_config(config.model_dump(mode="json")) == config


def test_privacy_check_asks_the_policy_not_the_mode_name(monkeypatch):
    secure = {"secure_aggregation": True}
    message = error_of(digits_config(schedule={"mode": "async"}, privacy=secure))
    assert ("privacy.secure_aggregation needs schedule.mode 'sync' or 'buffered', not 'async': "
            "under 'async' every update is its own aggregation") in message
    monkeypatch.setattr(Buffered, "supports_secure_aggregation", False)
    monkeypatch.setattr(Buffered, "no_secure_aggregation_because", "a test said so")
    monkeypatch.setattr(Async, "supports_secure_aggregation", True)
    message = error_of(digits_config(schedule={"mode": "buffered"}, privacy=secure))
    assert "needs schedule.mode 'sync' or 'async', not 'buffered': under 'buffered' a test said so" in message
    assert load_config(digits_config(schedule={"mode": "async"}, privacy=secure)).privacy.secure_aggregation
    monkeypatch.setattr(Async, "max_cohort", classmethod(lambda cls, config, n: (1, "one at a time")))
    message = error_of(digits_config(schedule={"mode": "async"}, privacy=secure))
    assert "privacy.min_cohort=2 exceeds the 1 one at a time" in message


def test_yaml_file_problems_name_the_file(tmp_path):
    assert error_of(tmp_path / "absent.yaml") == f"config file not found: {tmp_path / 'absent.yaml'}"

    listing = tmp_path / "list.yaml"
    listing.write_text("- just\n- a list\n")
    assert error_of(listing) == (
        f"{listing}: expected a mapping of settings at the top level, got list"
    )

    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text("groups: [unclosed\n")
    assert error_of(broken_yaml).startswith(f"{broken_yaml} is not valid YAML")

    typo = tmp_path / "typo.yaml"
    typo.write_text("groups: [{name: a, count: 2, resource: {num_cpus: 1}}]\ndataset: {name: digits}\n")
    message = error_of(typo)
    assert message.startswith(f"invalid settings in {typo}:")
    assert re.search(
        r"groups\[0\]\.resource: unknown field; allowed: (\w+, )*count, (\w+, )*resources\b",
        message,
    ), message


def test_missing_data_files_names_each_participant_and_path(tmp_path):
    (tmp_path / "clinic_1.csv").write_text("a,label\n1,0\n")
    config = load_config(broken(lambda c: c["groups"][0].update(
        count=3, data={"source": "file", "path": str(tmp_path / "clinic_{index}.csv"), "num_classes": 10},
    )) | {"evaluation": {"path": str(tmp_path / "test.csv")}})
    assert missing_data_files(config) == [
        f"participant site-0: data file not found: {tmp_path / 'clinic_0.csv'}",
        f"participant site-2: data file not found: {tmp_path / 'clinic_2.csv'}",
        f"evaluation: test file not found: {tmp_path / 'test.csv'}",
    ]


def test_paths_list_must_match_the_group_count(tmp_path):
    config = load_config(broken(lambda c: c["groups"][0].update(
        count=3, data={"source": "file", "paths": ["a.csv", "b.csv"], "num_classes": 10},
    )))
    assert missing_data_files(config)[0] == "group site: 2 paths for 3 participants"


def test_heterogeneous_resources_example_is_valid_and_says_what_it_claims():
    repo = Path(__file__).resolve().parents[1]
    config = load_config(repo / "examples" / "heterogeneous_resources.yaml")
    groups = {g.name: g for g in config.groups}
    assert (groups["hospital"].count, groups["hospital"].resources.num_cpus) == (3, 2)
    assert (groups["clinic"].count, groups["clinic"].resources.num_cpus) == (5, 0.5)
    assert missing_data_files(config) == []


def test_hosting_is_auto_unless_set_and_workers_mean_a_pool():
    def unset(**group) -> str:
        raw = digits_config()
        del raw["groups"][0]["hosting"]
        raw["groups"][0] |= group
        return load_config(raw).groups[0].hosting

    assert unset() == "auto"
    assert unset(workers=2) == "pool"
    assert unset(batched=True) == "pool"
    assert unset(batched="auto") == "auto"
    message = error_of(broken(lambda c: c["groups"][0].update(hosting="pooled")))
    assert "groups[0].hosting: Input should be 'auto', 'dedicated' or 'pool'" in message


@pytest.mark.parametrize(("group", "expected"), [
    ({"hosting": "dedicated", "workers": 2}, r"groups\[0\]: workers is a pool setting: set hosting: pool"),
    ({"hosting": "dedicated", "batched": True},
     r"groups\[0\]: batched: true trains a pool worker's participants together; .* set hosting: pool"),
    ({"hosting": "pool", "placement": "pack"},
     r"groups\[0\]: placement 'pack' reserves a placement-group bundle per participant, which needs "
     r"hosting: dedicated \(or auto\); a pool takes placement 'default', 'spread' or \{node: NAME\}"),
    ({"workers": 2, "placement": {"placement_group": "STRICT_SPREAD"}}, r"placement \{placement_group: \.\.\.\}"),
    ({"hosting": "pool", "resources": {"max_restarts": 3}},
     r"groups\[0\]: resources.max_restarts=3 applies to dedicated actors; pool workers are always restarted"),
])
def test_settings_a_pool_cannot_honour_are_refused_with_the_field(group, expected):
    assert re.search(expected, error_of(broken(lambda c: c["groups"][0].update(group))))


def test_secure_aggregation_takes_pooled_groups():
    config = digits_config(privacy={"secure_aggregation": True})
    config["groups"][0]["workers"] = 2  # keys and sealed updates live in each participant's state
    assert load_config(config).groups[0].hosting == "pool"


@pytest.mark.parametrize(("task", "preprocess", "expected"), [
    ("regression", {"standardize": True}, True),  # the target with the features: raw targets diverge
    ("regression", {}, True),
    ("regression", {"standardize": True, "standardize_target": False}, False),
    ("regression", {"standardize": False}, False),
    ("regression", {"standardize": False, "standardize_target": True}, True),
    ("regression", None, False),
    ("classification", {"standardize": True}, False),  # class labels are never scaled
])
def test_a_regression_target_is_standardized_with_the_features_unless_told(tmp_path, task, preprocess, expected):
    data = {"source": "file", "path": str(tmp_path / "s.csv"), "label_column": "y"}
    if task == "classification":
        data["num_classes"] = 2
    raw = {"task": task, "groups": [{"name": "s", "count": 2, "data": data}],
           "evaluation": {"path": str(tmp_path / "s.csv"), "label_column": "y"}}
    if preprocess is not None:
        raw["preprocess"] = preprocess
    assert load_config(raw).standardizes_target is expected


def test_model_and_strategy_are_one_named_options_pattern():
    """A name plus that target's options beside it, checked against what it declares."""
    from actors.spec.base import NamedOptions
    from actors.spec.training import ModelSpec
    from orchestrator.config.options import StrategyConfig

    for named, options in ((ModelSpec(name="mlp", hidden=[4]), {"hidden": [4]}),
                           (StrategyConfig(name="fedprox", mu=0.1), {"mu": 0.1})):
        assert isinstance(named, NamedOptions) and named.options == options
    with pytest.raises(ValueError, match=r"model 'mlp' has no option\(s\) \['hiden'\]"):
        ModelSpec(name="mlp", hiden=[4])
    with pytest.raises(ValueError, match=r"strategy 'fedprox' has no option\(s\) \['m'\]"):
        StrategyConfig(name="fedprox", m=0.1)
