"""The model zoo: every architecture runs on its view and splits into body and head."""

from __future__ import annotations

import pytest
import torch

from actors.spec.training import ModelSpec
from actors.training.models import build_model, resolve_factory
from actors.training.params import layout_of

VIEWS = {"flat": (64,), "image": (1, 8, 8), "sequence": (8, 8)}


@pytest.mark.parametrize(
    ("name", "options", "view"),
    [
        ("mlp", {"hidden": [16, 8]}, "flat"),
        ("cnn", {"channels": [4, 8], "hidden": 16}, "image"),
        ("gru", {"hidden": 12}, "sequence"),
        ("lstm", {"hidden": 12, "layers": 2}, "sequence"),
        ("transformer", {"dim": 16, "heads": 2}, "sequence"),
        ("gru", {"hidden": 12}, "image"),  # an image read row by row
    ],
)
def test_zoo_models_classify_their_view_and_split_body_and_head(name, options, view):
    model = build_model(name, options, VIEWS[view], 10)
    out = model(torch.randn(5, *VIEWS[view]))
    assert out.shape == (5, 10)
    names = layout_of(model).names
    assert names and all(n.startswith(("body.", "head.")) for n in names)
    assert any(n.startswith("head.") for n in names) and any(n.startswith("body.") for n in names)


def test_sizes_are_configurable():
    small = layout_of(build_model("gru", {"hidden": 8}, (8, 8), 10)).size
    large = layout_of(build_model("gru", {"hidden": 32}, (8, 8), 10)).size
    assert large > small
    assert layout_of(build_model("transformer", {"dim": 32, "layers": 2}, (8, 8), 10)).size > \
        layout_of(build_model("transformer", {"dim": 32, "layers": 1}, (8, 8), 10)).size


def test_wrong_view_names_the_model_and_the_view_to_use():
    with pytest.raises(ValueError, match="gru needs sequence-shaped input.*'sequence'"):
        build_model("gru", {}, (64,), 10)
    with pytest.raises(ValueError, match="cnn needs image-shaped input"):
        build_model("cnn", {}, (8, 8), 10)
    with pytest.raises(ValueError, match="divisible"):
        build_model("transformer", {"dim": 10, "heads": 3}, (8, 8), 10)


def test_model_options_are_checked_against_the_factory():
    with pytest.raises(ValueError, match="model 'gru' has no option"):
        ModelSpec(name="gru", channels=[4])
    assert ModelSpec(name="lstm", hidden=4).options == {"hidden": 4}


@pytest.mark.parametrize("dropout", [1.0, -0.1, 1.5, "half", True])
def test_an_mlp_dropout_outside_0_to_1_is_refused_by_the_config_not_by_the_actor(dropout):
    with pytest.raises(ValueError, match=r"option dropout must be a number in \[0, 1\)"):
        ModelSpec(name="mlp", dropout=dropout)


def test_an_mlp_with_dropout_drops_in_training_only():
    assert ModelSpec(name="mlp", dropout=0.25).options == {"dropout": 0.25}
    model = build_model("mlp", {"hidden": [64], "dropout": 0.5}, (64,), 10)
    x = torch.randn(8, 64)
    assert not torch.equal(model(x), model(x))  # two masks
    model.eval()
    assert torch.equal(model(x), model(x))


def test_user_factory_by_module_path():
    assert resolve_factory("actors.training.models:gru") is resolve_factory("gru")
    with pytest.raises(ValueError, match="cannot load model factory"):
        resolve_factory("no_such_module:thing")
