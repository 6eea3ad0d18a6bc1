"""The participant's model and private data, as the operations a strategy's client half uses.

:class:`TorchLocalModel` implements :class:`strategies.client.LocalModel`: a client half
says *what* to do (train with a proximal term, distill these logits, send this part) in
flat float32 vectors; this class does it with PyTorch on the participant's own tensors.
Local DP-SGD is a property of the silo, not of the strategy, so it is applied here: when
the group trains with ``dp_sgd`` every ``train`` call is a DP-SGD run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from actors.data.load import LocalData, apply_view, load_shared_dataset
from actors.spec.participant import ParticipantSpec
from actors.training import threads
from actors.training.distillation import consensus_term, distill, load_public_set, predict_logits
from actors.training.local_dp import check_budget, check_supported, train_dp_sgd
from actors.training.loops import evaluate, local_gradient, task_rng, to_tensors, train_locally
from actors.training.models import build_model
from actors.training.params import get_flat, layout_of, on_device, set_flat
from actors.training.tasks import loss_function, target_array
from strategies.client import ConsensusKD, Linear, Proximal, Term, Work
from strategies.privacy import PrivacyAccountant
from strategies.types import Layout

_WARMED: set[tuple[str, Layout, bool]] = set()
"""(device type, layout, DP-SGD) this process has run a warm-up step for."""

_LAYOUTS: dict[tuple, Layout] = {}
"""The layout of each architecture this process has built a model of."""


def _architecture(spec: ParticipantSpec, data: LocalData) -> tuple:
    """All :func:`build_model` is given: a factory's structure depends on nothing else."""
    return spec.model.model_dump_json(), data.input_shape, data.num_classes


def known_layout(spec: ParticipantSpec, data: LocalData) -> Layout | None:
    """The layout this participant's model will have, when this process has already built
    one of its architecture (so the model need not be built to learn it), else None."""
    return _LAYOUTS.get(_architecture(spec, data))


class TorchLocalModel:
    """One participant's model on its device, with its training and test tensors."""

    def __init__(self, spec: ParticipantSpec, data: LocalData, device: torch.device) -> None:
        self.spec, self.data, self.device = spec, data, device
        self.model = build_model(spec.model.name, spec.model.options, data.input_shape, data.num_classes).to(device)
        self.layout: Layout = layout_of(self.model)
        _LAYOUTS.setdefault(_architecture(spec, data), self.layout)
        self.loss_fn = loss_function(spec.task)
        self.x, self.y = to_tensors(data.x_train, target_array(data.y_train, spec.task), device)
        self.num_examples = len(self.y)
        self.lr = spec.train.lr
        self.dp_accountant: PrivacyAccountant | None = None
        if (dp := spec.train.dp_sgd) is not None:  # refuse a model Opacus cannot handle now
            check_supported(self.model, spec.name, spec.model.name)
            self.dp_accountant = PrivacyAccountant(dp.noise_multiplier, dp.delta)
        self.trainer: Callable[..., dict[str, float]] | None = None
        """Set while a pool worker trains several participants together (actors/participant/cohort.py)."""
        self.trained_together: int | None = None
        """The most participants one of the current task's training calls ran with."""
        self._public: torch.Tensor | None = None
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- parameters --------------------------------------------------------------------
    def get(self, layout: Layout | None = None) -> np.ndarray:
        layout = layout or self.layout
        return get_flat(self.model, layout) if layout.names else np.zeros(0, np.float32)

    def set(self, values: np.ndarray, layout: Layout | None = None) -> None:
        set_flat(self.model, on_device(values, self.device), layout or self.layout)

    def _tensors(self, flat: np.ndarray) -> dict[str, torch.Tensor]:
        """A full-layout vector as one tensor per parameter, by name, on the device."""
        vec = torch.tensor(np.asarray(flat, dtype=np.float32), device=self.device)  # copied: may be read-only
        return {name: vec[sl].view(shape) for (name, sl), shape in zip(self.layout.slices.items(), self.layout.shapes)}

    # -- local work --------------------------------------------------------------------
    def train(self, work: Work, terms: Sequence[Term] = (), trainable: str | None = None) -> dict[str, float]:
        """Local training as the client half asks: now, or with the other participants its
        pool worker trains at the same time (``trainer``, set by :mod:`actors.participant.cohort`)."""
        if self.trainer is not None:
            return self.trainer(self, work, terms, trainable)
        self.trained_with(1)
        return self.train_now(work, terms, trainable)

    def trained_with(self, count: int) -> None:
        """Note that a training call ran with ``count`` participants (1: alone): a task's
        update reports the most it trained with, whatever its client half does with the
        metrics (the history's ``batched`` column)."""
        self.trained_together = max(self.trained_together or 0, count)

    def train_now(self, work: Work, terms: Sequence[Term] = (), trainable: str | None = None) -> dict[str, float]:
        """Local training by itself; DP-SGD when the silo requires it."""
        threads.use(threads.alone(self))
        if self.dp_accountant is not None:
            return self._train_dp(work, terms, trainable)
        proximal = offset = extra = None
        for term in terms:
            if isinstance(term, Proximal):
                proximal = (term.mu, self._tensors(term.anchor))
            elif isinstance(term, Linear):
                offset = self._tensors(term.coef)
            elif isinstance(term, ConsensusKD):
                teacher = torch.tensor(term.teacher, device=self.device)  # a copy: the state is read-only
                extra = consensus_term(self.public_set(), teacher, term.temperature, term.weight, work.seed)
            else:
                raise TypeError(f"unknown loss term {type(term).__name__}")
        frozen = [] if trainable is None else [
            p for n, p in self.model.named_parameters() if not n.startswith(trainable)]
        for p in frozen:
            p.requires_grad_(False)
        try:
            return train_locally(self.model, self.x, self.y, self.spec.train, work.seed, work.epochs,
                                 work.steps, proximal=proximal, gradient_offset=offset, extra_loss=extra,
                                 loss_fn=self.loss_fn)
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def _train_dp(self, work: Work, terms: Sequence[Term], trainable: str | None) -> dict[str, float]:
        """DP-SGD supports plain training and a proximal term towards the start point."""
        unsupported = [type(t).__name__ for t in terms if not isinstance(t, Proximal)]
        if unsupported or trainable is not None:
            raise ValueError(f"participant {self.spec.name}: train.dp_sgd cannot apply "
                             f"{unsupported or 'training of a part of the model'}")
        mu = sum(t.mu for t in terms if isinstance(t, Proximal))
        train, dp = self.spec.train, self.spec.train.dp_sgd
        assert self.dp_accountant is not None and dp is not None
        check_budget(self.dp_accountant, dp, self.num_examples, train, work.epochs, work.steps, self.spec.name)
        return train_dp_sgd(self.model, self.x, self.y, train, self.dp_accountant, epochs=work.epochs,
                            steps=work.steps, proximal_mu=mu, loss_fn=self.loss_fn)

    def gradient(self, seed: int) -> tuple[np.ndarray, dict[str, float]]:
        batch = self.spec.train.batch_size
        loss = local_gradient(self.model, self.x, self.y, batch, seed, self.loss_fn)
        params = dict(self.model.named_parameters())
        grad = torch.cat([params[n].grad.reshape(-1).float().cpu() for n in self.layout.names]).numpy()
        return grad, {"train_loss": loss, "samples": float(min(batch, self.num_examples)), "steps": 1.0}

    def distill(self, teacher: np.ndarray, temperature: float, epochs: int, seed: int) -> float:
        target = torch.tensor(np.asarray(teacher, dtype=np.float32), device=self.device)  # a copy, as above
        with task_rng(seed, self.device):  # dropout, as in train_locally
            return distill(self.model, self.public_set(), target, self.spec.train, temperature, epochs, seed)

    def public_logits(self) -> np.ndarray:
        return predict_logits(self.model, self.public_set()).float().cpu().numpy()

    def evaluate(self) -> dict[str, float]:
        stds = self.spec.transform.target_stds if self.spec.transform is not None else ()
        return evaluate(self.model, *self.test_tensors(), self.spec.task, target_stds=stds)

    def warm_up(self) -> None:
        """One throwaway training step, undone afterwards (buffers too), so torch's lazy
        first-call set-up (seconds on a busy machine) happens at start-up instead of inside
        the first timed task, where it would swamp simulated speeds and time-to-accuracy.
        That set-up is the process's: a pool worker warms up once per architecture, not
        once for each of the hundreds of participants it serves."""
        key = (self.device.type, self.layout, self.spec.train.dp_sgd is not None)
        if self.num_examples == 0 or key in _WARMED:
            return
        saved = self.get()
        buffers = [b.clone() for b in self.model.buffers()]
        with torch.random.fork_rng(devices=[]):
            train_locally(self.model, self.x[:2], self.y[:2], self.spec.train, seed=0, epochs=1, steps=1,
                          loss_fn=self.loss_fn)
            if (dp := self.spec.train.dp_sgd) is not None:  # Opacus' first step too; nothing leaves
                train_dp_sgd(self.model, self.x[:2], self.y[:2], self.spec.train,
                             PrivacyAccountant(dp.noise_multiplier, dp.delta), epochs=1, steps=1,
                             loss_fn=self.loss_fn)
        self.set(saved)
        with torch.no_grad():
            for buffer, before in zip(self.model.buffers(), buffers):
                buffer.copy_(before)
        _WARMED.add(key)

    # -- data loaded on demand -----------------------------------------------------------
    def public_set(self) -> torch.Tensor:
        if self._public is None:
            if self.spec.dataset is None:
                raise ValueError(f"participant {self.spec.name}: soft labels need a run-level dataset with public_size")
            self._public = torch.as_tensor(load_public_set(self.spec.dataset, self.spec.data.view), device=self.device)
        return self._public

    def test_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This participant's own held-out rows if it has any, else the run dataset's
        shared test split, in its own view."""
        if self._test is None:
            x, y = self.data.x_test, self.data.y_test
            if not len(y) and self.spec.dataset is not None:
                full = load_shared_dataset(self.spec.dataset)
                x, y = apply_view(full.x_test, self.spec.data.view, full.image_shape), full.y_test
            self._test = to_tensors(x, target_array(y, self.spec.task), self.device)
        return self._test
