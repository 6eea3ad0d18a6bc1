"""Partial sharing: name/shape matching, averaging over only those who have a parameter,
FedRep's alternation, and what a participant sends. No Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.models import build_model
from actors.params import get_flat, layout_of
from actors.participant import Participant
from actors.personalised import load_shared, shared_part, train_fedrep
from actors.spec import DatasetSpec, ModelSpec, ParticipantSpec, PartitionData, TrainSpec
from strategies.partial import (
    FedPer,
    LGFedAvg,
    LocalOnly,
    average_by_name,
    global_positions,
    shared_names,
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
    assert FedPer.sharing == "body" and LGFedAvg.sharing == "head" and LocalOnly.sharing == "none"


def test_load_shared_replaces_only_the_shared_part():
    torch.manual_seed(0)
    model = build_model("mlp", {"hidden": [8]}, (4,), 3)
    layout = layout_of(model)
    head_before = get_flat(model, shared_part(layout, "head")).copy()
    glob = union_layout([shared_part(layout, "body")])
    state = GlobalState(3, np.full(glob.size, 0.5, np.float32), glob)
    part, values = load_shared(model, layout, "body", state)
    np.testing.assert_allclose(get_flat(model, part), 0.5)
    np.testing.assert_array_equal(get_flat(model, shared_part(layout, "head")), head_before)


def test_fedrep_fits_the_head_with_the_body_frozen_then_the_body():
    torch.manual_seed(0)
    model = build_model("mlp", {"hidden": [8]}, (4,), 3)
    layout = layout_of(model)
    phases: list[tuple[bool, bool]] = []  # (body trainable, head trainable) at each forward
    model.register_forward_pre_hook(lambda m, _: phases.append(
        (m.body[1].weight.requires_grad, m.head.weight.requires_grad)))
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    body0 = get_flat(model, shared_part(layout, "body")).copy()
    head0 = get_flat(model, shared_part(layout, "head")).copy()
    metrics = train_fedrep(model, x, y, TrainSpec(lr=0.1, batch_size=16), seed=0, head_epochs=2, body_epochs=1)
    assert phases == [(False, True)] * 8 + [(True, False)] * 4  # 2 head epochs, then 1 body epoch
    assert {"train_loss", "head_loss"} <= set(metrics) and metrics["samples"] == 3 * 64
    assert not np.allclose(get_flat(model, shared_part(layout, "head")), head0)
    assert not np.allclose(get_flat(model, shared_part(layout, "body")), body0)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen afterwards


def test_participant_sends_only_its_body_under_fedper():
    spec = ParticipantSpec(
        name="p-0", group="p", index_in_group=0, seed=1, model=ModelSpec(name="mlp", hidden=[16]),
        data=PartitionData(view="flat"), train=TrainSpec(lr=0.1),
        dataset=DatasetSpec(), partition_index=0, num_partitions=4,
    )
    p = Participant(spec)
    body = shared_part(p.layout, "body")
    glob = union_layout([body])
    start = np.asarray(p.initial_parameters()[global_positions(p.layout, body)])
    update = p.train(GlobalState(0, start, glob), Instructions(0, 0, seed=3, options={"sharing": "body"}))
    assert update.layout == body
    assert all(n.startswith("body.") for n in update.layout.names)
    assert update.payload.size == body.size < p.layout.size
    head = get_flat(p.model, shared_part(p.layout, "head"))
    assert not np.isin(head, update.payload).any()  # no head value leaves
