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

from actors.data import DataError, read_table
from actors.spec import FileData
from orchestrator.config import ConfigError, RunConfig, load_config

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
        (pd.DataFrame({"a": [1.0, 2.0], "y": [0, 1]}), "no label column 'label'"),
        (pd.DataFrame({"a": ["x", "y"], "label": [0, 1]}), "non-numeric feature columns \\['a'\\]"),
        (pd.DataFrame({"a": [1.0, 2.0], "label": [0.5, 1.5]}), "must hold integers"),
        (pd.DataFrame({"a": pd.Series([], dtype=float), "label": pd.Series([], dtype=int)}), "no rows"),
        (pd.DataFrame({"a": [1.0, np.nan], "label": [0, 1]}), "non-finite"),
    ],
)
def test_bad_data_files_name_the_participant_and_the_file(tmp_path, frame, expected):
    path = tmp_path / "hospital-3.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=expected) as info:
        read_table(path, _spec(), "clinic-3")
    assert "participant clinic-3" in str(info.value) and str(path) in str(info.value)
