"""Batched training of same-architecture participants equals training them one by one.

Each case trains K small MLPs (different initial weights, different dataset sizes, so
some batches are short and participants finish at different steps) once with
``train_batched`` and once with ``train_locally`` per participant, same seeds, and
compares parameters and the returned loss/samples/steps.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from actors.spec.training import DPSGD, TrainSpec
from actors.training import batched
from actors.training.batched import can_batch, train_batched
from actors.training.loops import batches, train_locally
from actors.training.models import build_model
from actors.training.optimizers import make_optimizer

SIZES = (37, 50, 64, 23)
SEEDS = (101, 202, 303, 404)
SPECS = {
    "sgd": TrainSpec(batch_size=16, lr=0.1),
    "sgd_momentum_wd": TrainSpec(batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam_wd": TrainSpec(batch_size=16, lr=0.01, optimizer="adam", weight_decay=1e-3),
}


def _participants(sizes=SIZES, outputs=3, regression=False, device="cpu"):
    """K MLPs with different initial weights and their own data."""
    models, xs, ys = [], [], []
    for i, n in enumerate(sizes):
        torch.manual_seed(i)
        models.append(build_model("mlp", {"hidden": [16]}, (8,), outputs).to(device))
        xs.append(torch.randn(n, 8, device=device))
        ys.append(torch.randn(n, 1, device=device) if regression
                  else torch.randint(0, outputs, (n,), device=device))
    return models, xs, ys


def _assert_same(batched_models, serial_models, got, want, atol=1e-5):
    for b, s in zip(batched_models, serial_models):
        for (name, p), q in zip(b.named_parameters(), s.parameters()):
            assert torch.allclose(p, q, atol=atol), f"{name}: max diff {(p - q).abs().max():.2e}"
    for g, w in zip(got, want):
        assert g["samples"] == w["samples"] and g["steps"] == w["steps"]
        assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-5, abs=1e-6)


def _compare(spec, epochs, steps, device="cpu", sizes=SIZES, atol=1e-5):
    models, xs, ys = _participants(sizes, device=device)
    serial = [copy.deepcopy(m) for m in models]
    before = [id(p) for m in models for p in m.parameters()]
    assert can_batch(models, [spec] * len(models)) is None
    got = train_batched(models, xs, ys, spec, list(SEEDS[: len(sizes)]), epochs, steps)
    want = [train_locally(m, x, y, spec, s, epochs, steps) for m, x, y, s in zip(serial, xs, ys, SEEDS)]
    assert [id(p) for m in models for p in m.parameters()] == before  # trained in place
    _assert_same(models, serial, got, want, atol)
    return got


@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_epochs_match_serial_training(spec_name):
    got = _compare(SPECS[spec_name], epochs=2, steps=None)
    assert [g["samples"] for g in got] == [2.0 * n for n in SIZES]
    assert [g["steps"] for g in got] == [6.0, 8.0, 8.0, 4.0]  # ceil(n / 16) per epoch, twice


@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_local_steps_match_serial_training(spec_name):
    got = _compare(SPECS[spec_name], epochs=1, steps=7)
    assert all(g["steps"] == 7.0 for g in got)


@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("per_upload", [1, 3])
def test_steps_uploaded_in_small_chunks_match_serial_training(monkeypatch, spec_name, per_upload):
    """The steps go to the device a chunk at a time; chunk edges (here inside an epoch and
    between a full and a short batch) change nothing, Adam's per-row step counts included."""
    monkeypatch.setattr(batched, "STEPS_PER_UPLOAD", per_upload)
    _compare(SPECS[spec_name], epochs=2, steps=None)


def test_participant_smaller_than_a_batch_steps_apart_from_the_first_step():
    """10 rows < batch 16: from the very first step it is in its own length group."""
    _compare(SPECS["adam_wd"], epochs=3, steps=None, sizes=(10, 40, 16))


def test_epochs_per_participant():
    spec = SPECS["sgd_momentum_wd"]
    models, xs, ys = _participants()
    serial = [copy.deepcopy(m) for m in models]
    epochs = [1, 3, 2, 1]
    got = train_batched(models, xs, ys, spec, list(SEEDS), epochs)
    want = [train_locally(m, x, y, spec, s, e) for m, x, y, s, e in zip(serial, xs, ys, SEEDS, epochs)]
    _assert_same(models, serial, got, want)


def test_frozen_parameters_stay_and_are_left_out_of_the_optimizer():
    spec = SPECS["adam_wd"]
    models, xs, ys = _participants()
    for m in models:
        m.head.bias.requires_grad_(False)
    frozen = [m.head.bias.detach().clone() for m in models]
    serial = [copy.deepcopy(m) for m in models]
    assert can_batch(models, [spec] * 4) is None
    got = train_batched(models, xs, ys, spec, list(SEEDS), 1)
    want = [train_locally(m, x, y, spec, s, 1) for m, x, y, s in zip(serial, xs, ys, SEEDS)]
    _assert_same(models, serial, got, want)
    assert all(torch.equal(m.head.bias, b) for m, b in zip(models, frozen))


def _serial_reference(model, x, y, spec, seed, epochs, steps, loss_fn):
    """train_locally's loop with a loss of our choosing, written out."""
    opt = make_optimizer(model, spec)
    total, seen, taken = 0.0, 0, 0
    for idx in batches(len(y), spec.batch_size, torch.Generator().manual_seed(seed), steps, epochs):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
        taken += 1
    return {"train_loss": total / max(seen, 1), "samples": float(seen), "steps": float(taken)}


@pytest.mark.parametrize("spec_name", ["sgd_momentum_wd", "adam_wd"])
def test_regression_loss_matches_serial_training(spec_name):
    spec = SPECS[spec_name]
    models, xs, ys = _participants(outputs=1, regression=True)
    serial = [copy.deepcopy(m) for m in models]
    reference = [copy.deepcopy(m) for m in models]
    got = train_batched(models, xs, ys, spec, list(SEEDS), 2, None, loss_fn=F.mse_loss)
    want = [_serial_reference(m, x, y, spec, s, 2, None, F.mse_loss)
            for m, x, y, s in zip(reference, xs, ys, SEEDS)]
    _assert_same(models, reference, got, want)
    if "loss_fn" not in inspect.signature(train_locally).parameters:
        return  # train_locally has no loss parameter yet: the written-out loop is the reference
    want = [train_locally(m, x, y, spec, s, 2, None, loss_fn=F.mse_loss)
            for m, x, y, s in zip(serial, xs, ys, SEEDS)]
    _assert_same(models, serial, got, want)


def test_can_batch_accepts_same_architecture_and_settings():
    models, _, _ = _participants()
    assert can_batch(models, [SPECS["sgd"]] * 4) is None


def test_can_batch_refuses_different_architectures():
    spec = SPECS["sgd"]
    small = build_model("mlp", {"hidden": [16]}, (8,), 3)
    wide = build_model("mlp", {"hidden": [32]}, (8,), 3)
    assert "architecture" in can_batch([small, wide], [spec, spec])
    relu = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    tanh = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 3))  # same parameters, other forward
    assert "architecture" in can_batch([relu, tanh], [spec, spec])


@pytest.mark.parametrize(("field", "value"), [
    ("lr", 0.2), ("momentum", 0.9), ("weight_decay", 0.1), ("batch_size", 8), ("optimizer", "adam"),
])
def test_can_batch_refuses_different_optimizer_settings(field, value):
    models, _, _ = _participants()
    specs = [SPECS["sgd"]] * 3 + [SPECS["sgd"].model_copy(update={field: value})]
    reason = can_batch(models, specs)
    assert reason is not None and field in reason and "optimizer settings" in reason


def test_can_batch_refuses_dp_sgd_buffers_and_dropout():
    models, _, _ = _participants(sizes=(5, 5))
    dp = SPECS["sgd"].model_copy(update={"dp_sgd": DPSGD(noise_multiplier=1.0, max_grad_norm=1.0)})
    assert "dp_sgd" in can_batch(models, [dp, dp])
    bn = [nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)) for _ in range(2)]
    assert "buffers" in can_batch(bn, [SPECS["sgd"]] * 2)
    drop = [build_model("mlp", {"hidden": [16], "dropout": 0.5}, (8,), 3) for _ in range(2)]
    assert "dropout" in can_batch(drop, [SPECS["sgd"]] * 2)
    no_drop = [build_model("mlp", {"hidden": [16], "dropout": 0.0}, (8,), 3) for _ in range(2)]
    assert can_batch(no_drop, [SPECS["sgd"]] * 2) is None


def test_random_ops_fail_loudly_instead_of_diverging():
    """Functional dropout that can_batch cannot see: vmap refuses the random op."""

    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.dropout(self.linear(x), 0.5, training=True)

    models, xs, ys = [Noisy(), Noisy()], [torch.randn(8, 8)] * 2, [torch.zeros(8, dtype=torch.long)] * 2
    with pytest.raises(RuntimeError, match="random"):
        train_batched(models, xs, ys, SPECS["sgd"], [0, 1], 1)


@pytest.mark.gpu
@pytest.mark.parametrize("spec_name", ["sgd_momentum_wd", "adam_wd"])
def test_cuda_matches_serial_training(spec_name):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    # cuBLAS sums batched and single matmuls in different orders, and Adam divides by
    # sqrt(v): a near-zero gradient's rounding moves its parameter by up to ~lr. Serial
    # CUDA against serial CPU differs as much, so the tolerance is wider than on CPU.
    _compare(SPECS[spec_name], epochs=2, steps=None, device="cuda", atol=1e-4)


def test_bf16_autocast_trains_close_to_fp32_but_not_identically():
    """``precision: bf16`` runs the forward pass in bfloat16: the same run, slightly
    different numbers (so the setting is really applied), and still learning."""
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long()
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model("mlp", {"hidden": [16]}, (8,), 2)
        losses[precision] = train_locally(model, x, y, TrainSpec(precision=precision, lr=0.1), seed=0, epochs=5)
    assert losses["bf16"]["train_loss"] != losses["fp32"]["train_loss"]
    assert losses["bf16"]["train_loss"] == pytest.approx(losses["fp32"]["train_loss"], rel=0.05)


def test_a_read_only_global_vector_goes_to_the_card_once():
    """What a pool worker relies on to copy the global vector once per round: the same
    read-only array asked for again gives one device tensor, another array or a
    writable one does not, and a model set from it holds exactly the vector."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    import numpy as np

    from actors.training.params import get_flat, layout_of, on_device, set_flat

    device = torch.device("cuda")
    model = build_model("mlp", {"hidden": [8]}, (4,), 3).to(device)
    layout = layout_of(model)
    flat = np.arange(layout.size, dtype=np.float32)
    flat.flags.writeable = False  # as the object store hands it out
    assert on_device(flat, device) is flat  # once: copied into the model as before
    first = on_device(flat, device)  # twice: now kept on the card
    assert isinstance(first, torch.Tensor) and first.device.type == "cuda"
    assert on_device(flat, device) is first
    other = flat.copy()
    other.flags.writeable = False
    assert on_device(other, device) is other
    writable = flat.copy()
    assert on_device(writable, device) is writable  # may change in place: never cached
    set_flat(model, on_device(flat, device), layout)
    np.testing.assert_array_equal(get_flat(model, layout), flat)
