"""Partial sharing: name/shape matching, averaging over only those who have a parameter,
FedRep's alternation, and what a participant sends. No Ray."""

from __future__ import annotations

import numpy as np
import pytest

from actors.participant.participant import Participant
from actors.spec.data import DatasetSpec, PartitionData
from actors.spec.participant import ParticipantSpec
from actors.spec.training import ModelSpec, TrainSpec
from actors.training.models import build_model
from actors.training.params import layout_of
from strategies.partial import (
    FedPer,
    LGFedAvg,
    LocalOnly,
    average_by_name,
    global_positions,
    load_shared,
    shared_names,
    shared_part,
    union_layout,
)
from strategies.types import GlobalState, Instructions, Layout, Update


def _update(name: str, layout: Layout, values, n: int = 1) -> Update:
    return Update(name, 0, "delta", np.asarray(values, np.float32), layout, n)


def test_a_parameter_only_two_of_three_have_is_averaged_over_those_two():
    ab = Layout(("body.w", "body.extra"), ((2,), (1,)))
    c = Layout(("body.w",), ((2,),))
    glob = union_layout([ab, ab, c])
    assert glob.names == ("body.w", "body.extra")
    ups = [_update("a", ab, [1, 1, 10], n=1), _update("b", ab, [3, 3, 30], n=3), _update("c", c, [5, 5], n=4)]
    out = average_by_name(np.zeros(3, np.float32), glob, ups)
    # body.w: (1*1 + 3*3 + 4*5) / 8; body.extra: (1*10 + 3*30) / 4, not / 8
    np.testing.assert_allclose(out, [30 / 8, 30 / 8, 100 / 4])


def test_same_name_with_different_shapes_never_mixes():
    small = Layout(("head.weight",), ((10, 16),))
    large = Layout(("head.weight",), ((10, 32),))
    glob = union_layout([small, large])
    assert glob.names == ("head.weight@10x16", "head.weight@10x32")
    out = average_by_name(
        np.zeros(glob.size, np.float32), glob,
        [_update("a", small, np.ones(160)), _update("b", large, np.full(320, 2.0))],
    )
    np.testing.assert_allclose(out[:160], 1.0)
    np.testing.assert_allclose(out[160:], 2.0)
    with pytest.raises(KeyError, match="head.bias"):
        global_positions(glob, Layout(("head.bias",), ((10,),)))


def test_stale_partial_update_counts_less_and_absent_coordinates_stay():
    lay = Layout(("body.w",), ((1,),))
    glob = Layout(("body.w", "head.w"), ((1,), (1,)))
    up = _update("a", lay, [4.0])
    up.weight = 0.5
    out = average_by_name(np.array([1.0, 7.0], np.float32), glob, [up])
    np.testing.assert_allclose(out, [3.0, 7.0])


def test_sharing_selects_body_or_head_by_name():
    layout = layout_of(build_model("mlp", {"hidden": [8]}, (4,), 3))
    assert shared_names(layout, "body") == ["body.1.weight", "body.1.bias"]
    assert shared_names(layout, "head") == ["head.weight", "head.bias"]
    assert shared_names(layout, "none") == []
    assert FedPer.shares == "body" and LGFedAvg.shares == "head" and LocalOnly.shares == "none"


def _participant(strategy: str = "fedper", **options) -> Participant:
    p = Participant(ParticipantSpec(
        name="p-0", group="p", index_in_group=0, seed=1, model=ModelSpec(name="mlp", hidden=[16]),
        data=PartitionData(view="flat"), train=TrainSpec(lr=0.1, batch_size=32),
        dataset=DatasetSpec(), partition_index=0, num_partitions=4,
        strategy=strategy, strategy_options=options,
    ))
    p.describe()  # sets itself up (data, model) on its first call
    return p


def _body_state(p: Participant, version: int = 0) -> GlobalState:
    body = shared_part(p.layout, "body")
    start = np.asarray(p.initial_parameters()[global_positions(p.layout, body)])
    return GlobalState(version, start, union_layout([body]))


def test_load_shared_replaces_only_the_shared_part():
    p = _participant()
    layout = p.layout
    head_before = p.local.get(shared_part(layout, "head")).copy()
    part = shared_part(layout, "body")
    glob = union_layout([part])
    values = load_shared(p.local, part, GlobalState(3, np.full(glob.size, 0.5, np.float32), glob))
    np.testing.assert_allclose(p.local.get(part), 0.5)
    np.testing.assert_array_equal(values, p.local.get(part))
    np.testing.assert_array_equal(p.local.get(shared_part(layout, "head")), head_before)


def test_fedrep_fits_the_head_with_the_body_frozen_then_the_body():
    p = _participant("fedrep", head_epochs=2)
    model, layout = p.local.model, p.layout
    phases: list[tuple[bool, bool]] = []  # (body trainable, head trainable) at each forward
    model.register_forward_pre_hook(lambda m, _: phases.append(
        (m.body[1].weight.requires_grad, m.head.weight.requires_grad)))
    state = _body_state(p)
    head0 = p.local.get(shared_part(layout, "head")).copy()
    update = p.train(state, Instructions(0, seed=0))
    steps = -(-p.local.num_examples // 32)  # batches per epoch
    training = [ph for ph in phases if ph != (True, True)]  # evaluation forwards train nothing
    assert training == [(False, True)] * (2 * steps) + [(True, False)] * steps  # 2 head epochs, then body
    assert {"train_loss", "head_loss"} <= set(update.metrics)
    assert update.metrics["samples"] == 3 * p.local.num_examples
    assert not np.allclose(p.local.get(shared_part(layout, "head")), head0)
    assert np.abs(update.payload).sum() > 0  # the body moved
    assert all(q.requires_grad for q in model.parameters())  # unfrozen afterwards


def test_participant_sends_only_its_body_under_fedper():
    p = _participant()
    body = shared_part(p.layout, "body")
    update = p.train(_body_state(p), Instructions(0, seed=3))
    assert update.layout == body
    assert all(n.startswith("body.") for n in update.layout.names)
    assert update.payload.size == body.size < p.layout.size
    head = p.local.get(shared_part(p.layout, "head"))
    assert not np.isin(head, update.payload).any()  # no head value leaves
