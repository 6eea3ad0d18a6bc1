"""Tasks, metrics and preprocessing arithmetic, without Ray.

Metrics are checked against scikit-learn on random data; the preprocessing sums against
numpy on the pooled rows; the config checks of ``task`` and ``preprocess`` by their
messages; the stop target in both directions (higher-is-better and error metrics).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

from actors.data.preprocess import (
    PreprocessError,
    apply_transform,
    magnitudes,
    numeric_block,
    site_schema,
    squared_deviations,
    sums,
)
from actors.spec.data import MISSING_CATEGORY, FittedTransform, PreprocessSpec
from actors.spec.training import TaskSpec
from actors.training.tasks import auroc, loss_function, metrics
from orchestrator.config import ConfigError, load_config
from orchestrator.loop.run_state import RunState
from orchestrator.loop.stopping import stop_reason
from orchestrator.server.preprocessing import fit_statistics
from strategies.secure_aggregation import encode, unmask_sum
from strategies.types import Layout

CLASSIFICATION = TaskSpec()
REGRESSION = TaskSpec.model_validate("regression")


# -- metrics against scikit-learn ----------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    logits = torch.as_tensor(rng.normal(size=(300, 5)), dtype=torch.float32)
    y = torch.as_tensor(rng.integers(0, 5, size=300))
    got = metrics(logits, y, CLASSIFICATION)
    pred = logits.argmax(1).numpy()
    assert got["accuracy"] == pytest.approx(accuracy_score(y.numpy(), pred), abs=1e-6)  # float32 mean
    assert got["macro_f1"] == pytest.approx(f1_score(y.numpy(), pred, average="macro"), abs=1e-9)
    assert got["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-6)
    assert math.isnan(got["auroc"])  # five classes: no AUROC


def test_macro_f1_counts_a_class_only_predicted_as_zero_like_scikit_learn():
    y = torch.tensor([0, 0, 1, 1, 1])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 1, 0]), 3).float()  # class 2 never true
    got = metrics(logits, y, CLASSIFICATION)
    expected = f1_score(y.numpy(), [0, 2, 1, 1, 0], average="macro")
    assert got["macro_f1"] == pytest.approx(expected, abs=1e-12)
    assert got["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_auroc_equals_scikit_learn_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=200)
    logits = rng.normal(size=(200, 2)) + np.stack([np.zeros(200), y * 0.8], 1)
    got = metrics(torch.as_tensor(logits, dtype=torch.float32), torch.as_tensor(y), CLASSIFICATION)
    prob = torch.softmax(torch.as_tensor(logits, dtype=torch.float32), 1)[:, 1].double().numpy()
    assert got["auroc"] == pytest.approx(roc_auc_score(y, prob), abs=1e-9)
    assert 0.6 < got["auroc"] < 0.95

    tied = np.round(rng.uniform(size=200) + 0.3 * y, 1)  # ~13 distinct scores: many ties
    assert len(np.unique(tied)) < 20
    assert auroc(torch.as_tensor(tied), torch.as_tensor(y)) == pytest.approx(roc_auc_score(y, tied), abs=1e-12)


def test_auroc_of_all_tied_scores_is_one_half_and_of_a_perfect_ranking_one():
    y = torch.tensor([0, 1, 0, 1, 1])
    assert auroc(torch.full((5,), 0.3), y) == pytest.approx(0.5)
    assert auroc(torch.tensor([0.1, 0.9, 0.2, 0.8, 0.7]), y) == pytest.approx(1.0)
    assert auroc(torch.tensor([0.9, 0.1, 0.8, 0.2, 0.3]), y) == pytest.approx(0.0)


def test_auroc_is_nan_for_one_class_labels_and_for_more_than_two_classes():
    rng = np.random.default_rng(0)
    two = torch.as_tensor(rng.normal(size=(20, 2)), dtype=torch.float32)
    assert math.isnan(metrics(two, torch.ones(20, dtype=torch.int64), CLASSIFICATION)["auroc"])
    assert math.isnan(metrics(two, torch.zeros(20, dtype=torch.int64), CLASSIFICATION)["auroc"])
    assert math.isnan(auroc(torch.rand(10), torch.zeros(10, dtype=torch.int64)))
    three = torch.as_tensor(rng.normal(size=(30, 3)), dtype=torch.float32)
    y3 = torch.as_tensor(np.arange(30) % 3)
    got = metrics(three, y3, CLASSIFICATION)
    assert math.isnan(got["auroc"]) and not math.isnan(got["accuracy"])


@pytest.mark.parametrize("outputs", [1, 2])
def test_regression_metrics_equal_scikit_learn(outputs):
    rng = np.random.default_rng(outputs)
    y = rng.normal(3.0, 2.0, size=(250, outputs))
    pred = y + rng.normal(0.0, 0.7, size=y.shape) + 0.2
    got = metrics(torch.as_tensor(pred, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32), REGRESSION)
    assert set(got) == {"loss", "mse", "mae", "r2"}
    assert got["mse"] == pytest.approx(mean_squared_error(y, pred), rel=1e-5)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, pred), rel=1e-5)
    assert got["r2"] == pytest.approx(r2_score(y, pred), abs=1e-5)
    assert got["loss"] == pytest.approx(got["mse"], rel=1e-6)  # mse is the default loss
    assert 0.8 < got["r2"] < 0.95


def test_regression_metrics_in_target_units_when_trained_standardized():
    rng = np.random.default_rng(5)
    y = rng.normal(size=(100, 1))
    pred = y + rng.normal(0.0, 0.3, size=y.shape)
    plain = metrics(torch.as_tensor(pred, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32), REGRESSION)
    scaled = metrics(torch.as_tensor(pred, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32),
                     REGRESSION, target_stds=[1000.0])
    assert scaled["mse"] == pytest.approx(plain["mse"] * 1e6, rel=1e-5)
    assert scaled["mae"] == pytest.approx(plain["mae"] * 1e3, rel=1e-5)
    assert scaled["r2"] == pytest.approx(plain["r2"], abs=1e-6)
    assert scaled["loss"] == pytest.approx(plain["loss"], rel=1e-6)  # the loss as trained


def test_r2_is_nan_for_a_constant_target_and_empty_sets_give_nan():
    y = torch.full((10, 1), 2.0)
    assert math.isnan(metrics(torch.rand(10, 1), y, REGRESSION)["r2"])
    empty = metrics(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64), CLASSIFICATION)
    assert set(empty) == {"loss", "accuracy", "macro_f1", "auroc"} and all(math.isnan(v) for v in empty.values())


# -- losses --------------------------------------------------------------------------


def test_huber_loss_uses_its_delta():
    out, y = torch.zeros(2, 1), torch.tensor([[0.5], [3.0]])
    # |e| <= delta: e^2 / 2; beyond: delta * (|e| - delta / 2)
    assert float(loss_function(TaskSpec(kind="regression", loss="huber"))(out, y)) == pytest.approx((0.125 + 2.5) / 2)
    huber2 = TaskSpec(kind="regression", loss="huber", huber_delta=2.0)
    assert float(loss_function(huber2)(out, y)) == pytest.approx((0.125 + 4.0) / 2)


def test_mse_and_cross_entropy_losses():
    out, y = torch.zeros(2, 1), torch.tensor([[0.5], [3.0]])
    assert float(loss_function(REGRESSION)(out, y)) == pytest.approx((0.25 + 9.0) / 2)
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(1 / (1 + math.e))) / 2
    assert float(loss_function(CLASSIFICATION)(logits, labels)) == pytest.approx(expected, rel=1e-6)


# -- TaskSpec ------------------------------------------------------------------------


def test_task_shorthand_and_defaults():
    assert REGRESSION.kind == "regression" and REGRESSION.loss_name == "mse" and REGRESSION.metric_name == "r2"
    assert CLASSIFICATION.loss_name == "cross_entropy" and CLASSIFICATION.metric_name == "accuracy"
    config = load_config({"task": "regression", "groups": [{"name": "s", "data": {
        "source": "file", "path": "x.csv", "label_column": "y"}}], "evaluation": {"path": "t.csv"}})
    assert config.task == REGRESSION


@pytest.mark.parametrize(("task", "expected"), [
    ({"kind": "regression", "loss": "cross_entropy"}, "loss 'cross_entropy' is not for regression; use mse or huber"),
    ({"kind": "classification", "loss": "huber"}, "loss 'huber' is not for classification; use cross_entropy"),
    ({"kind": "regression", "metric": "accuracy"},
     "metric 'accuracy' is not a regression metric; use one of: r2, mse, mae, loss"),
    ({"kind": "classification", "metric": "r2"},
     "metric 'r2' is not a classification metric; use one of: accuracy, macro_f1, auroc, loss"),
])
def test_a_loss_or_metric_of_the_other_task_is_refused_naming_the_allowed(task, expected):
    with pytest.raises(ValidationError) as info:
        TaskSpec.model_validate(task)
    assert expected in str(info.value)


@pytest.mark.parametrize(("task", "higher"), [
    ("classification", True), ("regression", True), ({"kind": "regression", "metric": "mse"}, False),
    ({"kind": "regression", "metric": "mae"}, False), ({"kind": "classification", "metric": "loss"}, False),
    ({"kind": "classification", "metric": "auroc"}, True),
])
def test_higher_is_better(task, higher):
    assert TaskSpec.model_validate(task).higher_is_better is higher


# -- preprocessing: a site's half ----------------------------------------------------


def test_site_schema_refuses_a_text_column_not_listed_as_categorical():
    frame = pd.DataFrame({"age": [1.0, 2.0], "scanner": ["GE", "Siemens"], "ward": ["a", "b"]})
    with pytest.raises(PreprocessError) as info:
        site_schema(frame, ["age", "scanner", "ward"], PreprocessSpec(), "participant h-1: h1.csv")
    message = str(info.value)
    assert message.startswith("participant h-1: h1.csv: column 'scanner' is not numeric")
    assert "'GE'" in message and "preprocess.categorical" in message and "ward" in message
    schema = site_schema(frame, ["age", "scanner", "ward"], PreprocessSpec(categorical=["scanner", "ward"]), "w")
    assert schema == {"numeric": ["age"], "categories": {"scanner": ["GE", "Siemens"], "ward": ["a", "b"]}, "rows": 2}


def test_site_schema_missing_categories():
    frame = pd.DataFrame({"age": [1.0, 2.0, 3.0], "scanner": ["GE", None, "GE"]})
    imputed = site_schema(frame, ["age", "scanner"], PreprocessSpec(impute="mean", categorical=["scanner"]), "w")
    assert imputed["categories"] == {"scanner": sorted(["GE", MISSING_CATEGORY])}
    with pytest.raises(PreprocessError, match="w: categorical column 'scanner' has 1 missing values"):
        site_schema(frame, ["age", "scanner"], PreprocessSpec(categorical=["scanner"]), "w")
    with pytest.raises(PreprocessError, match=r"names columns it lacks: \['ward'\]"):
        site_schema(frame, ["age", "scanner"], PreprocessSpec(categorical=["ward"]), "w")


def _fit(sites: list[np.ndarray], secure: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The driver's rounds (orchestrator/server/preprocessing.py's fit_statistics) over sites held
    here; ``secure``: each site's vector encoded to the masks' fixed point and the ring sum
    decoded, as under secure aggregation (the pairwise masks cancel exactly: left out)."""
    def total(scales, means, size):
        vectors = []
        for x in sites:
            if scales is None:
                v = magnitudes(x)
            else:
                xs = x * np.asarray(scales)
                v = sums(xs) if means is None else squared_deviations(xs, np.asarray(means))
            vectors.append(v)
        assert all(v.size == size for v in vectors)
        return unmask_sum([encode(v) for v in vectors]) if secure else np.sum(vectors, axis=0)

    return fit_statistics(total, [f"c{i}" for i in range(sites[0].shape[1])])


def _pooled_fit(sites: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return _fit(sites)


def test_sums_and_deviations_over_sites_with_missing_values_equal_the_pooled_statistics():
    rng = np.random.default_rng(0)
    scales = np.array([0.001, 1.0, 100.0, 4000.0])
    sites = []
    for size, shift in ((40, 0.0), (75, 1.0), (120, -0.5)):  # each site its own mean
        x = (rng.normal(shift, 1.0, size=(size, 4)) + 3.0) * scales
        x[rng.uniform(size=x.shape) < 0.1] = np.nan
        sites.append(x)
    pooled = np.concatenate(sites)
    assert np.isnan(pooled).sum() > 20
    means, stds = _pooled_fit(sites)
    np.testing.assert_allclose(means, np.nanmean(pooled, axis=0), rtol=1e-12)
    np.testing.assert_allclose(stds**2, np.nanvar(pooled, axis=0), rtol=1e-10)
    counts = sums(sites[0])[:4]
    np.testing.assert_array_equal(counts, (~np.isnan(sites[0])).sum(0))
    # no site's own statistics are the global ones
    assert not np.allclose(np.nanmean(sites[0], 0), means, rtol=1e-2)


@pytest.mark.parametrize("level", [4000.0, 1e9])
def test_a_column_far_from_zero_keeps_its_std(level):
    """``level +- 1``: squared deviations from the global mean, not E[x^2] - E[x]^2."""
    rng = np.random.default_rng(1)
    sites = [level + rng.normal(0.0, 1.0, size=(n, 1)) for n in (50, 80, 30)]
    pooled = np.concatenate(sites)
    _, stds = _pooled_fit(sites)
    assert stds[0] == pytest.approx(float(np.std(pooled - level)), rel=1e-9)
    assert 0.8 < stds[0] < 1.2


def _secure_fit(sites: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return _fit(sites, secure=True)


def test_fixed_point_masking_keeps_ordinary_columns():
    rng = np.random.default_rng(2)
    sites = [rng.normal([3.0, 300.0, 12000.0], [1.0, 100.0, 4000.0], size=(80, 3)) for _ in range(4)]
    plain, secure = _pooled_fit(sites), _secure_fit(sites)
    np.testing.assert_allclose(secure[0], plain[0], rtol=1e-8)
    np.testing.assert_allclose(secure[1], plain[1], rtol=1e-7)


@pytest.mark.parametrize(("loc", "scale", "rows"), [(3e-6, 1e-6, 80), (5e4, 2e4, 400)],
                         ids=["micro_unit_column", "wide_column"])
def test_fixed_point_masking_keeps_micro_and_wide_columns(loc, scale, rows):
    rng = np.random.default_rng(0)
    sites = [rng.normal(loc, scale, size=(rows, 1)) for _ in range(4)]
    _, plain = _pooled_fit(sites)
    _, secure = _secure_fit(sites)
    assert 0.8 * scale < plain[0] < 1.2 * scale
    assert secure[0] == pytest.approx(plain[0], rel=1e-5)  # before per-column scales: 0.0


def test_numeric_block_names_a_text_column():
    frame = pd.DataFrame({"a": [1.0, 2.0], "flow": ["12.5", "closed"]})
    with pytest.raises(PreprocessError) as info:
        numeric_block(frame, ["a", "flow"], "participant c-2: c.csv")
    assert str(info.value) == "participant c-2: c.csv: column 'flow' is not numeric (values such as ['12.5', 'closed'])"
    with pytest.raises(PreprocessError, match="column 'a' holds inf values"):
        numeric_block(pd.DataFrame({"a": [1.0, np.inf]}), ["a"], "w")


def test_apply_transform_imputes_standardizes_and_one_hots_in_the_fitted_order():
    transform = FittedTransform(numeric=["a", "b"], means=[2.0, 100.0], stds=[4.0, 50.0],
                                categories={"c": ["z", "x", MISSING_CATEGORY]}, impute="mean")
    frame = pd.DataFrame({"c": ["x", "w", None, "z"], "b": [150.0, 100.0, 50.0, np.nan],
                          "a": [2.0, 6.0, np.nan, -2.0]})
    x = apply_transform(frame, transform, "w")
    assert x.dtype == np.float32
    assert transform.output_columns == ["a", "b", "c=z", "c=x", f"c={MISSING_CATEGORY}"]
    np.testing.assert_allclose(x, [
        [0.0, 1.0, 0, 1, 0],   # x
        [1.0, 0.0, 0, 0, 0],   # w: unseen, all zeros
        [0.0, -1.0, 0, 0, 1],  # missing a -> mean -> 0; missing category
        [-1.0, 0.0, 1, 0, 0],  # missing b -> mean -> 0; z
    ])
    unscaled = apply_transform(frame, transform.model_copy(update={"standardize": False}), "w")
    np.testing.assert_allclose(unscaled[:, :2], [[2, 150], [6, 100], [2, 50], [-2, 100]])


def test_apply_transform_refuses_missing_values_under_impute_refuse_and_absent_columns():
    transform = FittedTransform(numeric=["a", "b"], means=[0.0, 0.0], stds=[1.0, 1.0])
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [np.nan, 1.0, np.nan]})
    with pytest.raises(PreprocessError) as info:
        apply_transform(frame, transform, "participant s-0: s.csv")
    assert str(info.value) == ("participant s-0: s.csv: column 'b' has 2 missing values and "
                               "preprocess.impute is 'refuse'")
    with pytest.raises(PreprocessError, match=r"lacks columns the run was fitted on: \['b'\]"):
        apply_transform(frame[["a"]], transform, "w")


# -- RunConfig -----------------------------------------------------------------------


def _files(**data) -> list[dict]:
    return [{"name": "site", "count": 2, "data": {"source": "file", "path": "s{index}.csv", **data}}]


def _refused(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(raw)
    return str(info.value)


def test_regression_on_digits_is_refused():
    message = _refused({"task": "regression", "dataset": {"name": "digits"}, "groups": [{"name": "s", "count": 2}]})
    assert "task: regression needs table data; dataset 'digits' is classification" in message


@pytest.mark.parametrize("strategy", ["fedmd", "dsfl", "feddf"])
def test_regression_with_a_soft_label_strategy_is_refused_naming_it(strategy):
    message = _refused({"task": "regression", "strategy": {"name": strategy},
                        "dataset": {"name": "table", "path": "pool.csv", "label_column": "y", "public_size": 20},
                        "groups": [{"name": "s", "count": 2}]})
    assert f"strategy {strategy!r} exchanges soft labels" in message


def test_num_classes_must_fit_the_task():
    message = _refused({"task": "regression", "groups": _files(label_column="y", num_classes=3),
                        "evaluation": {"path": "t.csv"}})
    assert "groups[0].data.num_classes: regression has no classes; drop it" in message
    message = _refused({"groups": _files(label_column="y"), "evaluation": {"path": "t.csv"}})
    assert "groups[0].data.num_classes: required for classification" in message


def test_preprocess_needs_tables():
    message = _refused({"preprocess": {}, "dataset": {"name": "digits"}, "groups": [{"name": "s", "count": 2}]})
    assert "groups[0].data: preprocess applies to tables" in message and "'partition'" in message
    ok = load_config({"preprocess": {"categorical": ["c"]}, "groups": _files(num_classes=2),
                      "evaluation": {"path": "t.csv"}})
    assert ok.preprocess.categorical == ["c"] and ok.preprocess.impute == "refuse"


def test_stop_target_and_target_accuracy_are_exclusive():
    message = _refused({"dataset": {}, "groups": [{"name": "s"}], "stop": {"target": 0.9, "target_accuracy": 0.9}})
    assert "give target (for task.metric) or target_accuracy, not both" in message
    assert load_config({"dataset": {}, "groups": [{"name": "s"}], "stop": {"target_accuracy": 0.9}}).target == (
        "accuracy", 0.9)
    regression = load_config({"task": {"kind": "regression", "metric": "mae"}, "groups": _files(label_column="y"),
                              "evaluation": {"path": "t.csv"}, "stop": {"target": 3.5}})
    assert regression.target == ("mae", 3.5)
    message = _refused({"task": "regression", "groups": _files(label_column="y"), "evaluation": {"path": "t.csv"},
                        "stop": {"target_accuracy": 0.9}})
    assert "stop.target_accuracy: regression has no accuracy" in message


def test_standardize_target_is_for_regression():
    message = _refused({"preprocess": {"standardize_target": True}, "groups": _files(num_classes=2),
                        "evaluation": {"path": "t.csv"}})
    assert "preprocess.standardize_target: class labels are not scaled" in message


# -- the stop target, both directions ------------------------------------------------


def _state() -> RunState:
    return RunState("r", np.zeros(1, np.float32), Layout(("w",), ((1,),)))


@pytest.mark.parametrize(("value", "reached"), [(11.0, False), (10.0, True), (9.5, True)])
def test_an_error_target_is_reached_at_or_below_it(value, reached):
    state = _state()
    state.evaluated({"mse": value, "r2": 0.1}, ("mse", 10.0), now=7.0)
    assert state.time_to_target == (7.0 if reached else None)
    assert state.last_eval["mse"] == value


@pytest.mark.parametrize(("value", "reached"), [(0.79, False), (0.8, True), (0.95, True)])
def test_an_r2_target_is_reached_at_or_above_it(value, reached):
    state = _state()
    state.evaluated({"mse": 100.0, "r2": value}, ("r2", 0.8), now=3.0)
    assert state.time_to_target == (3.0 if reached else None)


def test_the_stop_reason_names_the_metric():
    config = load_config({"task": {"kind": "regression", "metric": "mse"}, "groups": _files(label_column="y"),
                          "evaluation": {"path": "t.csv"}, "stop": {"target": 10.0, "max_aggregations": 50}})
    state = _state()
    state.evaluated({"mse": 12.0}, config.target, now=1.0)
    assert stop_reason(config, state, alive=2, now=1.0) is None
    state.evaluated({"mse": 9.0}, config.target, now=2.0)
    state.evaluated({"mse": 20.0}, config.target, now=3.0)  # the first time it was reached counts
    assert state.time_to_target == 2.0
    assert stop_reason(config, state, alive=2, now=3.0) == "reached target mse=10"
