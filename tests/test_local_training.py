"""Local training's loss terms and randomness, on a real participant's model (no Ray)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from torch import nn

from actors.participant.participant import Participant
from actors.spec.data import DatasetSpec, PartitionData
from actors.spec.participant import ParticipantSpec
from actors.spec.training import ModelSpec, TrainSpec
from actors.training.loops import train_locally
from actors.training.models import BodyHead
from strategies.client import Linear, Proximal, Work

LR = 0.1


def frozen_first_layer(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """A user's model whose first layer is frozen (a pretrained embedding, say): it is in
    ``model.parameters()`` but not in the layout, so not in the anchor either."""
    first = nn.Linear(int(np.prod(input_shape)), 16)
    first.requires_grad_(False)
    body = nn.Sequential(nn.Flatten(), first, nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
    return BodyHead(body, nn.Linear(16, num_classes))


def local(model: str = "tests.test_local_training:frozen_first_layer", **options):
    s = ParticipantSpec(
        name="site-0", group="site", index_in_group=0, seed=3, model=ModelSpec(name=model, **options),
        data=PartitionData(), train=TrainSpec(batch_size=32, lr=LR), dataset=DatasetSpec(),
        partition_index=0, num_partitions=4,
    )
    return Participant(s).local


@pytest.mark.parametrize("term", ["proximal", "linear"])
def test_loss_terms_pair_each_trainable_parameter_with_its_own_entry_past_a_frozen_layer(term):
    lm = local()
    assert [n for n in lm.layout.names if n.startswith("body.1")] == []  # the frozen layer
    start = lm.get()
    rng = np.random.default_rng(0)
    mu, anchor = 2.0, start + rng.normal(0, 0.1, start.size).astype(np.float32)
    coef = rng.normal(0, 0.1, start.size).astype(np.float32)
    one_step = Work(seed=1, epochs=1, steps=1)
    plain = lm.train_now(one_step)
    moved_plain = lm.get() - start
    lm.set(start)
    with_term = Proximal(mu, anchor) if term == "proximal" else Linear(coef)
    lm.train_now(one_step, (with_term,))
    moved = lm.get() - start
    # one SGD step: the term's gradient is mu * (w - anchor), or coef, entry by entry
    expected = -LR * (mu * (start - anchor) if term == "proximal" else coef)
    np.testing.assert_allclose(moved - moved_plain, expected, rtol=1e-4, atol=1e-6)
    assert plain["steps"] == 1.0


def test_dropout_masks_follow_the_task_seed_not_the_process_history():
    """The same task from the same weights trains the same, whatever the process drew
    before; the caller's generator is left as it was."""
    lm = local("mlp", hidden=[32], dropout=0.5)
    start = lm.get()

    def trained(seed: int) -> np.ndarray:
        lm.set(start)
        train_locally(lm.model, lm.x, lm.y, lm.spec.train, seed, epochs=1, steps=3)
        return lm.get()

    torch.manual_seed(0)
    first = trained(7)
    torch.rand(1000)  # another participant's work in the same process, say
    before = torch.get_rng_state()
    np.testing.assert_array_equal(trained(7), first)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(("optimizer", "momentum", "weight_decay"), [
    ("sgd", 0.0, 0.0), ("sgd", 0.9, 0.0), ("sgd", 0.9, 1e-3), ("adam", 0.0, 0.0), ("adam", 0.0, 1e-3)])
def test_the_local_optimizers_train_to_the_same_bits_as_torch_optim(optimizer, momentum, weight_decay):
    """fedray's SGD and Adam (no torch._dynamo import) against torch.optim's, 25 steps."""
    import copy

    from actors.training.optimizers import make_optimizer, torch_optimizer

    spec = TrainSpec(optimizer=optimizer, lr=0.05, momentum=momentum, weight_decay=weight_decay)
    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    theirs = copy.deepcopy(ours)
    ours[0].bias.requires_grad_(False)  # a frozen tensor stays out of both
    theirs[0].bias.requires_grad_(False)
    pairs = [(ours, make_optimizer(ours, spec)), (theirs, torch_optimizer(theirs, spec))]
    gen = torch.Generator().manual_seed(1)
    for _ in range(25):
        x, y = torch.randn(6, 8, generator=gen), torch.randint(0, 3, (6,), generator=gen)
        for model, opt in pairs:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
