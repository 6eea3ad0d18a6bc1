"""Hypothesis over the config schema: any YAML document validates or gives a ConfigError
that names the field; never another exception. Plus bad participant data files."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import digits_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from actors.data.tables import DataError, read_table
from actors.spec.data import FileData
from actors.spec.training import TaskSpec
from orchestrator.config import ConfigError, RunConfig, load_config
from strategies import STRATEGIES

FIELDS = ["name", "seed", "dataset", "groups", "strategy", "schedule", "stop", "evaluation",
          "updates", "ray", "checkpoint", "privacy", "count", "model", "data", "train", "resources",
          "system", "mode", "every", "keep", "dp", "clip_norm", "noise_multiplier", "delta",
          "secure_aggregation", "hidden", "source", "path", "max_aggregations", "min_participants",
          "task_timeout_s", "hang_prob", "lr", "num_cpus", "max_restarts", "partition", "kind"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from(["sync", "async", "buffered", "mlp", "fedavg", "digits",
                                           "file", "partition", "iid", "-1", "1e-3"]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=5),
    max_leaves=25,
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _load_text(tmp_path_factory, text: str):
    path = tmp_path_factory.mktemp("fuzz") / "run.yaml"
    path.write_text(text)
    return load_config(path)


def _outcome(tmp_path_factory, text: str) -> RunConfig | ConfigError:
    try:
        return _load_text(tmp_path_factory, text)
    except ConfigError as exc:
        message = str(exc)
        assert message.strip() and "Traceback" not in message
        return exc


@SETTINGS
@given(documents)
def test_any_yaml_document_validates_or_names_the_problem(tmp_path_factory, doc):
    _outcome(tmp_path_factory, yaml.safe_dump(doc))


@SETTINGS
@given(st.text(max_size=200))
def test_any_text_is_yaml_or_a_config_error(tmp_path_factory, text):
    _outcome(tmp_path_factory, text)


# -- well-typed configs with small mutations -------------------------------------------
# Random documents almost never get past field validation, so they never exercise the
# cross-field checks (RunConfig._consistent and what it calls). These start from valid
# configs and change a few settings, mostly to values of the right type that may clash.

PUBLIC = {"name": "digits", "public_size": 60, "partition": {"kind": "iid"}}
BASES = [
    digits_config(),
    digits_config(schedule={"mode": "sync", "clients_per_round": 2, "over_select": 0.5},
                  checkpoint={"every": 2, "keep": 1},
                  privacy={"dp": {"clip_norm": 1.0, "noise_multiplier": 1.0}}),
    digits_config(schedule={"mode": "buffered", "buffer_size": 2, "concurrency": 3},
                  privacy={"secure_aggregation": True, "min_cohort": 2}),
    digits_config(schedule={"mode": "async", "alpha": 0.5},
                  strategy={"name": "fedprox", "mu": 0.1}),
    digits_config(dataset=PUBLIC, strategy={"name": "fedmd"}),
    digits_config(groups=[*digits_config()["groups"], {**digits_config()["groups"][0],
                                                        "name": "late", "count": 1, "join_at": 2}]),
]
PER_MODE = {"sync": "clients_per_round", "buffered": "concurrency", "async": "concurrency"}


def _count(doc, draw):
    draw(st.sampled_from(doc["groups"]))["count"] = draw(st.integers(1, 6))


def _per_round(doc, draw):
    schedule = doc.setdefault("schedule", {})
    key = draw(st.sampled_from([PER_MODE[schedule.get("mode", "sync")], "min_participants"]))
    schedule[key] = draw(st.integers(1, 8))


def _mode(doc, draw):  # another mode, with only settings that mode has
    mode = draw(st.sampled_from(sorted(PER_MODE)))
    doc["schedule"] = {"mode": mode}
    if mode == "buffered":
        doc["schedule"]["buffer_size"] = draw(st.integers(1, 4))


def _strategy(doc, draw):
    doc["strategy"] = {"name": draw(st.sampled_from(sorted(STRATEGIES)))}


def _privacy(doc, draw):
    doc["privacy"] = draw(st.fixed_dictionaries({}, optional={
        "secure_aggregation": st.booleans(), "min_cohort": st.integers(1, 6),
        "dp": st.none() | st.just({"clip_norm": 1.0, "noise_multiplier": 0.5})}))


def _dataset(doc, draw):
    choice = draw(st.sampled_from(["drop", "public", "no public"]))
    if choice == "drop":
        doc.pop("dataset", None)
    else:
        doc["dataset"] = {**PUBLIC, "public_size": 60 if choice == "public" else 0}


def _group(doc, draw):  # a second group: maybe a repeated name, maybe a late joiner
    first = doc["groups"][0]
    name = draw(st.sampled_from([first["name"], "other"]))
    doc["groups"].append({**copy.deepcopy(first), "name": name, "join_at": draw(st.integers(0, 3))})


def _join_at(doc, draw):
    draw(st.sampled_from(doc["groups"]))["join_at"] = draw(st.integers(0, 3))


def _dp_sgd(doc, draw):
    train = draw(st.sampled_from(doc["groups"])).setdefault("train", {})
    train["dp_sgd"] = draw(st.none() | st.just({"noise_multiplier": 1.0, "max_grad_norm": 1.0}))


def _ill_typed(doc, draw):  # now and then a wrong type, as a typo would give
    path = draw(st.sampled_from(list(_leaves(doc))))
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = draw(st.sampled_from([-7, "not-a-number", [1, 2], {"x": 1}, None]))


MUTATIONS = [_count, _per_round, _mode, _strategy, _privacy, _dataset, _group, _join_at,
             _dp_sgd, _ill_typed]


@st.composite
def mutated_configs(draw):
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        draw(st.sampled_from(MUTATIONS))(doc, draw)
    return doc


def _reaches_model_validators(text: str) -> bool:
    """Whether every field validated, so RunConfig's model validators ran: the config is
    valid, or only they refused it (their errors have no field location)."""
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        return False
    try:
        RunConfig.model_validate(raw)
    except ValidationError as exc:
        return all(err["loc"] == () for err in exc.errors())
    return True


def test_the_fuzzer_starts_from_valid_configs():
    for base in BASES:
        load_config(copy.deepcopy(base))


def test_mutated_configs_validate_or_name_the_problem_and_reach_the_model_checks(tmp_path_factory):
    reached: list[bool] = []
    refused: list[str] = []

    @SETTINGS
    @given(mutated_configs())
    def fuzz(doc):
        text = yaml.safe_dump(doc)
        result = _outcome(tmp_path_factory, text)
        reached.append(_reaches_model_validators(text))
        if reached[-1] and isinstance(result, ConfigError):
            refused.append(str(result))

    fuzz()
    assert len(reached) >= 100
    assert sum(reached) >= 0.3 * len(reached), f"only {sum(reached)} of {len(reached)} reached them"
    assert len(refused) >= 0.1 * len(reached), refused  # and their refusals are exercised


def _leaves(doc, prefix=()):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _leaves(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _leaves(v, (*prefix, i))
    else:
        yield prefix


@SETTINGS
@given(st.data())
def test_a_bad_value_in_a_valid_config_is_reported_at_its_field(tmp_path_factory, data):
    base = digits_config(checkpoint={"every": 2, "keep": 1},
                         privacy={"dp": {"clip_norm": 1.0, "noise_multiplier": 1.0}})
    path = data.draw(st.sampled_from(list(_leaves(base))))
    bad = data.draw(st.sampled_from([-7, "not-a-number", [1, 2], {"x": 1}, None, 1e300]))
    doc = copy.deepcopy(base)
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = bad
    result = _outcome(tmp_path_factory, yaml.safe_dump(doc))
    if isinstance(result, ConfigError):
        named = [str(p) for p in path if isinstance(p, str)]
        assert any(n in str(result) for n in named), (path, str(result))


def test_secure_aggregation_is_refused_under_async_and_accepted_under_buffered():
    with pytest.raises(ConfigError, match="secure_aggregation needs schedule.mode 'sync' or 'buffered', not 'async'"):
        load_config(digits_config(schedule={"mode": "async"}, privacy={"secure_aggregation": True}))
    cfg = load_config(digits_config(schedule={"mode": "buffered", "buffer_size": 2},
                                    privacy={"secure_aggregation": True}))
    assert cfg.privacy.min_cohort == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"schedule": {"clients_per_round": 2}, "privacy": {"secure_aggregation": True, "min_cohort": 3}},
         r"privacy.min_cohort=3 exceeds the 2 schedule.clients_per_round"),
        ({"privacy": {"secure_aggregation": True, "min_cohort": 5}},
         r"privacy.min_cohort=5 exceeds the 4 participants in the run"),
        ({"strategy": {"name": "krum"}, "privacy": {"secure_aggregation": True}},
         r"strategy 'krum' inspects each update.*use a mean-based strategy"),
        ({"strategy": {"name": "median"}, "privacy": {"dp": {"clip_norm": 1.0, "noise_multiplier": 1.0}}},
         r"strategy 'median' inspects each update"),
        ({"privacy": {"secure_aggregation": True, "min_cohort": 0}}, r"privacy.min_cohort"),
    ],
)
def test_privacy_settings_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(digits_config(**overrides))


def _spec(**kw) -> FileData:
    return FileData(source="file", path="x.csv", num_classes=3, **kw)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (pd.DataFrame({"a": [1.0, 2.0], "y": [0, 1]}), "has no target column 'label'"),
        (pd.DataFrame({"a": ["x", "y"], "label": [0, 1]}), "column 'a' is not numeric"),
        (pd.DataFrame({"a": [1.0, 2.0], "label": [0.5, 1.5]}), "must hold integers"),
        (pd.DataFrame({"a": pd.Series([], dtype=float), "label": pd.Series([], dtype=int)}), "no rows"),
        (pd.DataFrame({"a": [1.0, np.nan], "label": [0, 1]}), "column 'a' has 1 missing or infinite values"),
    ],
)
def test_bad_data_files_name_the_participant_and_the_file(tmp_path, frame, expected):
    path = tmp_path / "hospital-3.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=expected) as info:
        read_table(path, _spec(), "participant clinic-3", TaskSpec(), 3)
    assert "participant clinic-3" in str(info.value) and str(path) in str(info.value)
