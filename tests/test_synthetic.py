"""Synthetic(alpha, beta): each participant generates its own data, cheaply and
deterministically, and federated training on it learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import digits_config

from actors.data.load import load_participant_data, load_shared_dataset, synthetic_task
from actors.data.synthetic import Synthetic
from actors.spec.data import DatasetSpec, PartitionData
from actors.spec.participant import ParticipantSpec
from actors.spec.training import ModelSpec, TrainSpec
from orchestrator.config import ConfigError, load_config


def label_entropy(y: np.ndarray, classes: int = 10) -> float:
    share = np.bincount(y, minlength=classes) / len(y)
    share = share[share > 0]
    return float(-(share * np.log(share)).sum())


def spec(index: int, num_partitions: int, **dataset) -> ParticipantSpec:
    return ParticipantSpec(
        name=f"d-{index}", group="d", index_in_group=index, seed=index,
        model=ModelSpec(name="mlp", hidden=[]), data=PartitionData(), train=TrainSpec(),
        dataset=DatasetSpec(name="synthetic", **dataset), partition_index=index,
        num_partitions=num_partitions,
    )


def synthetic_config(**dataset) -> dict:
    raw = digits_config()
    raw["dataset"] = {"name": "synthetic", **dataset}
    return raw


# -- the generator ---------------------------------------------------------------------


def test_a_participant_is_the_same_for_the_same_seed_and_index_only():
    first, again = Synthetic(seed=3).participant(7), Synthetic(seed=3).participant(7)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(Synthetic(seed=3).examples(8)[0][:5], first[0][:5])
    assert not np.array_equal(Synthetic(seed=4).examples(7)[0][:5], first[0][:5])


def test_a_participants_data_does_not_depend_on_the_run_size():
    small, large = load_participant_data(spec(5, 10)), load_participant_data(spec(5, 10_000))
    np.testing.assert_array_equal(small.x_train, large.x_train)
    np.testing.assert_array_equal(small.y_test, large.y_test)
    assert small.source == "synthetic participant 5"


def test_rows_are_float32_features_and_int64_labels_in_range():
    x_train, y_train, x_test, y_test = Synthetic(num_features=12, num_classes=4).participant(0)
    assert x_train.dtype == x_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int64
    assert x_train.shape[1] == x_test.shape[1] == 12
    assert min(y_train.min(), y_test.min()) >= 0 and max(y_train.max(), y_test.max()) < 4
    local = load_participant_data(spec(0, 4))
    assert local.input_shape == (60,) and local.num_classes == 10


def test_sizes_follow_the_power_law_and_need_no_data(monkeypatch):
    gen = Synthetic(max_size=None)
    for k in (0, 1, 99):
        x, _ = gen.examples(k)
        assert len(x) == gen.size(k)
        train, test = gen.participant(k)[0], gen.participant(k)[2]
        assert len(test) == gen.num_test(gen.size(k)) >= 1 and len(train) + len(test) == gen.size(k)

    def no_data(*_):
        raise AssertionError("sizes must not generate data")

    monkeypatch.setattr(Synthetic, "examples", no_data)
    monkeypatch.setattr(Synthetic, "_task", no_data)
    sizes = gen.sizes(range(5000))
    assert sizes.min() >= gen.min_size
    extra = sizes - gen.min_size  # floor(LogNormal(4, 2)): median e^4 = 55
    assert 45 <= np.median(extra) <= 65
    assert np.log(extra[extra > 0]).std() == pytest.approx(2.0, rel=0.1)
    top = np.sort(sizes)[::-1]
    assert top[:500].sum() > 0.5 * top.sum()  # the heavy tail: a tenth holds most examples
    capped = Synthetic(min_size=20, max_size=300).sizes(range(2000))
    assert capped.min() >= 20 and capped.max() == 300


def test_beta_skews_inputs_and_labels_alpha_only_the_models():
    """beta moves each participant's input mean, so its labels concentrate; alpha moves
    every entry of W_k and b_k by the same u_k, a constant added to every class's logit,
    so it spreads the participants' true models and leaves their labels exactly alone."""
    def input_means(gen: Synthetic) -> np.ndarray:
        return np.array([gen.task(k)[2].mean() for k in range(200)])

    assert input_means(Synthetic(beta=3.0)).std() > 2.5 * input_means(Synthetic(beta=0.0)).std()
    entropy = {b: np.mean([label_entropy(Synthetic(beta=b).examples(k)[1]) for k in range(60)])
               for b in (0.0, 3.0)}
    assert entropy[3.0] < 0.7 * entropy[0.0]

    def model_means(gen: Synthetic) -> np.ndarray:
        return np.array([gen.task(k)[0].mean() for k in range(200)])

    assert model_means(Synthetic(alpha=3.0)).std() > 10 * model_means(Synthetic(alpha=0.0)).std()
    for k in range(5):
        np.testing.assert_array_equal(Synthetic(alpha=0.0).examples(k)[1], Synthetic(alpha=3.0).examples(k)[1])


def test_feature_variances_decay_as_the_diagonal_covariance():
    gen = Synthetic(num_features=20, min_size=20_000, max_size=20_000)
    diagonal = gen.covariance_diagonal()
    np.testing.assert_allclose(diagonal, np.arange(1, 21) ** -1.2)
    x, _ = gen.examples(0)
    np.testing.assert_allclose(x.var(axis=0), diagonal, rtol=0.1)


# -- the driver's test set ---------------------------------------------------------------


def test_the_driver_evaluates_on_the_pooled_test_splits_of_the_first_participants():
    dataset = DatasetSpec(name="synthetic", eval_participants=5)
    full = load_shared_dataset(dataset, 3)  # a run of 3: all of them
    tests = [load_participant_data(spec(k, 3, eval_participants=5)) for k in range(3)]
    np.testing.assert_array_equal(full.x_test, np.concatenate([t.x_test for t in tests]))
    np.testing.assert_array_equal(full.y_test, np.concatenate([t.y_test for t in tests]))
    assert len(full.x_train) == 0 and full.num_classes == 10 and full.image_shape is None
    assert len(load_shared_dataset(dataset, 1000).y_test) == sum(
        synthetic_task(dataset).num_test(synthetic_task(dataset).size(k)) for k in range(5))
    train_rows = {row.tobytes() for row in tests[0].x_train}
    assert not train_rows & {row.tobytes() for row in full.x_test}  # held out, never trained on


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize("dataset, group_data, message", [
    ({"partition": {"kind": "iid"}}, None, "partition does not apply to name: synthetic"),
    ({"public_size": 50}, None, "public_size is not available with name: synthetic"),
    ({"min_size": 100, "max_size": 50}, None, "max_size=50 is below min_size=100"),
    ({"alpha": -1}, None, r"dataset\.alpha: Input should be greater than or equal to 0"),
    ({}, {"source": "partition", "view": "image"}, r"groups\[0\]\.data\.view: synthetic features are flat"),
    ({}, {"source": "partition", "test_fraction": 0.1},
     r"groups\[0\]\.data\.test_fraction: synthetic participants already hold out"),
])
def test_settings_that_do_not_fit_synthetic_are_refused(dataset, group_data, message):
    raw = synthetic_config(**dataset)
    if group_data is not None:
        raw["groups"][0]["data"] = group_data
    with pytest.raises(ConfigError, match=message):
        load_config(raw)


def test_synthetic_settings_with_digits_are_refused_and_configs_round_trip():
    with pytest.raises(ConfigError, match="dataset: alpha, beta: synthetic settings, not used by name: digits"):
        load_config(digits_config(dataset={"name": "digits", "alpha": 2.0, "beta": 0.5}))
    for raw in (digits_config(), synthetic_config(alpha=0.5, beta=0.5, max_size=500)):
        config = load_config(raw)
        assert load_config(config.model_dump(mode="json")) == config  # a run dir's config.yaml
    example = Path(__file__).parents[1] / "examples" / "synthetic.yaml"
    assert load_config(example).dataset.name == "synthetic"


# -- one real run --------------------------------------------------------------------------


def test_fedavg_learns_synthetic_on_ray(ray_session):
    from orchestrator.loop.run import Orchestrator

    raw = synthetic_config(max_size=300, eval_participants=20)
    raw["groups"][0] |= {"count": 20, "hosting": "pool", "workers": 2, "model": {"name": "mlp", "hidden": []},
                         "train": {"local_epochs": 2, "batch_size": 10, "lr": 0.05}}
    raw |= {"schedule": {"mode": "sync", "clients_per_round": 10}, "stop": {"max_aggregations": 8}}
    history = Orchestrator(load_config(raw)).run()
    accuracy = history[history.event == "evaluation"].accuracy
    assert accuracy.iloc[-1] > accuracy.iloc[0] + 0.25, accuracy.tolist()
    assert set(history[history.event == "update"].participant) <= {f"site-{k}" for k in range(20)}
