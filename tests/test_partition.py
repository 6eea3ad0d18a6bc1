"""Partitioners on real labels (the bundled digits), no Ray."""

from __future__ import annotations

import numpy as np
import pytest

from actors.data import partition
from actors.data.load import load_shared_dataset, split_indices
from actors.spec.data import DatasetSpec, PartitionSpec


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return load_shared_dataset(DatasetSpec()).y_train


def _is_exact_cover(parts: list[np.ndarray], n: int) -> bool:
    joined = np.concatenate(parts)
    return len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))


def _mean_label_entropy(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean Shannon entropy (bits) of each part's label distribution; log2(10) is uniform."""
    out = []
    for p in parts:
        counts = np.bincount(labels[p], minlength=10).astype(float)
        q = counts[counts > 0] / counts.sum()
        out.append(float(-(q * np.log2(q)).sum()))
    return float(np.mean(out))


@pytest.mark.parametrize(
    "split",
    [
        lambda y: partition.iid(len(y), 7, seed=1),
        lambda y: partition.dirichlet(y, 8, alpha=0.3, seed=1),
        lambda y: partition.shards(y, 5, shards_per_part=2, seed=1),
    ],
    ids=["iid", "dirichlet", "shards"],
)
def test_parts_cover_every_sample_exactly_once(labels, split):
    parts = split(labels)
    assert _is_exact_cover(parts, len(labels))
    assert all(len(p) > 0 for p in parts)


def test_iid_sizes_differ_by_at_most_one(labels):
    sizes = [len(p) for p in partition.iid(len(labels), 7, seed=0)]
    assert sum(sizes) == len(labels)
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_skew_is_strong_for_small_alpha_and_fades_for_large(labels):
    uniform = np.log2(10)
    iid = _mean_label_entropy(partition.iid(len(labels), 8, seed=0), labels)
    entropies = {
        alpha: np.mean([
            _mean_label_entropy(partition.dirichlet(labels, 8, alpha, seed=s), labels)
            for s in range(3)
        ])
        for alpha in (0.1, 0.5, 100.0)
    }
    assert entropies[0.1] < entropies[0.5] < entropies[100.0]
    assert entropies[0.1] < 0.6 * uniform  # a few dominant classes per part
    assert entropies[100.0] > 0.97 * uniform  # practically IID
    assert abs(entropies[100.0] - iid) < 0.05


def test_dirichlet_respects_min_size(labels):
    parts = partition.dirichlet(labels, 10, alpha=0.1, seed=3, min_size=20)
    assert min(len(p) for p in parts) >= 20


def test_same_seed_same_split_other_seed_other_split(labels):
    a = partition.dirichlet(labels, 8, 0.5, seed=4)
    b = partition.dirichlet(labels, 8, 0.5, seed=4)
    c = partition.dirichlet(labels, 8, 0.5, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert all(
        np.array_equal(x, y)
        for x, y in zip(partition.shards(labels, 5, 2, seed=9), partition.shards(labels, 5, 2, seed=9))
    )


def test_shards_give_each_part_few_classes(labels):
    parts = partition.shards(labels, 10, shards_per_part=2, seed=0)
    classes = [len(np.unique(labels[p])) for p in parts]
    # a label-sorted shard (~144 samples, classes of 133-150) spans 1-3 classes, so two
    # shards give a handful; an IID part would hold all 10
    assert max(classes) <= 5
    assert np.mean(classes) <= 3.2
    assert min(len(np.unique(labels[p])) for p in partition.iid(len(labels), 10, seed=0)) == 10
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 2


def test_split_indices_follows_the_dataset_spec(labels):
    spec = DatasetSpec(partition=PartitionSpec(kind="shards", shards_per_participant=1))
    parts = split_indices(spec, 10)
    assert _is_exact_cover(parts, len(labels))
    classes = [len(np.unique(labels[p])) for p in parts]
    assert max(classes) <= 3 and np.mean(classes) <= 2.2


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda y: partition.iid(len(y), 0, seed=0), "at least one part"),
        (lambda y: partition.iid(3, 5, seed=0), "cannot split 3 samples into 5 parts"),
        (lambda y: partition.dirichlet(y, 4, alpha=0.0, seed=0), "alpha must be > 0"),
        (lambda y: partition.dirichlet(y[:5], 8, alpha=1.0, seed=0), "cannot split 5 samples"),
        (lambda y: partition.shards(y[:10], 4, shards_per_part=3, seed=0), "into 12 parts"),
    ],
    ids=["zero-parts", "too-few-samples", "alpha-zero", "dirichlet-too-few", "shards-too-few"],
)
def test_bad_arguments_say_what_is_wrong(labels, call, message):
    with pytest.raises(ValueError, match=message):
        call(labels)


def test_no_dirichlet_part_is_ever_empty(labels):
    """1,000 parts of 1,438 digits: the minimum was capped to 0 and 243 participants got
    no rows (then all 1,000 failed); refused at once, naming what helps."""
    with pytest.raises(partition.PartitionError) as info:
        partition.dirichlet(labels, 1000, alpha=0.5, seed=0)
    assert str(info.value) == ("a Dirichlet(0.5) split of 1438 samples into 1000 parts (under 2 per part "
                               "on average) leaves parts empty")
    assert info.value.min_size is None
    for num_parts in (200, 400, 719):  # the cap reaches 1, never 0
        try:
            parts = partition.dirichlet(labels, num_parts, alpha=5.0, seed=0)
        except partition.PartitionError as exc:
            assert exc.min_size == 1
        else:
            assert min(len(p) for p in parts) >= 1


def test_a_capped_minimum_says_so_and_the_draws_stay_the_seeds(labels):
    with pytest.raises(partition.PartitionError) as info:
        partition.dirichlet(labels, 100, alpha=0.5, seed=0)
    assert str(info.value) == (
        "could not draw a Dirichlet(0.5) split of 1438 samples into 100 parts with at least 7 samples "
        "each (min_size 10 capped at half the mean part size) in 1000 draws")
    assert info.value.min_size == 7
    # the sizes are counted before a draw's parts are built: the same split as building them
    parts = partition.dirichlet(labels, 70, alpha=0.5, seed=0)
    assert [len(p) for p in parts[:6]] == [41, 18, 12, 15, 17, 14]
    assert min(len(p) for p in parts) >= 10 and _is_exact_cover(parts, len(labels))


def test_an_infeasible_split_is_refused_once_before_any_participant_starts(ray_session):
    from conftest import digits_config

    from orchestrator.config import load_config
    from orchestrator.loop.run import Orchestrator, RunError

    dataset = {"name": "digits", "partition": {"kind": "dirichlet", "alpha": 0.5, "min_size": 50}}
    group = {**digits_config()["groups"][0], "count": 100, "hosting": "pool", "workers": 2}
    orch = Orchestrator(load_config(digits_config(dataset=dataset, groups=[group])))
    with pytest.raises(RunError, match=r"^dataset.partition: could not draw a Dirichlet\(0.5\) split"):
        orch.run()
    assert not orch.members  # refused before a single participant was started
