"""Partial parameter sharing: FedPer, FedRep, LG-FedAvg (and local-only as the baseline).

Participants may run different architectures. Each sends only the parameters its strategy
shares (names starting ``body.`` or ``head.``, see ``actors/training/models.py``), as a delta with
its own layout. The global state is the *union* of everything shared, matched by parameter
name and shape: a parameter only some participants have is averaged over those only.

- ``FedPer`` (Arivazhagan et al., 2019): share the body, keep a personal head.
- ``FedRep`` (Collins et al., ICML 2021): share the body; locally, first fit the personal
  head with the body frozen (``head_epochs``), then the body with the head frozen.
- ``LG-FedAvg`` (Liang et al., 2020): share the head, keep a personal body (local
  representations, global classifier).
- ``local``: share nothing; every participant trains alone (the baseline to beat).

Global keys: a parameter name stays as is when every participant that has it agrees on
its shape; if two architectures use one name with different shapes, each variant gets
the key ``name@AxB`` so they never mix. Participants and strategies find their slice with
:func:`global_positions`, so the rule lives in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from strategies.base import Strategy
from strategies.client import LocalModel, PersonalClient, Plan, Result, Work, with_test_metrics
from strategies.types import GlobalState, Layout, Sharing, Update


def shared_names(layout: Layout, sharing: Sharing) -> list[str]:
    """Names of ``layout`` that a participant sends under ``sharing``."""
    if sharing == "all":
        return list(layout.names)
    if sharing == "none":
        return []
    return [n for n in layout.names if n.startswith(f"{sharing}.")]


def shared_part(layout: Layout, sharing: Sharing) -> Layout:
    """The sub-layout a participant sends under ``sharing``; the rest is personal."""
    return layout.subset(shared_names(layout, sharing))


def _shape_tag(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape) or "scalar"


def union_layout(layouts: Iterable[Layout], prefix: str = "") -> Layout:
    """Every (name, shape) of ``layouts`` once, in first-seen order, as global keys.

    >>> a = Layout(("body.w", "head.w"), ((2,), (3,)))
    >>> b = Layout(("body.w", "head.b"), ((4,), (1,)))
    >>> union_layout([a, b]).names
    ('body.w@2', 'head.w', 'body.w@4', 'head.b')
    """
    seen: dict[tuple[str, tuple[int, ...]], None] = {}
    for layout in layouts:
        for name, shape in zip(layout.names, layout.shapes):
            seen.setdefault((name, tuple(shape)), None)
    shapes_of: dict[str, set] = {}
    for name, shape in seen:
        shapes_of.setdefault(name, set()).add(shape)
    keys = [
        f"{prefix}{name}" if len(shapes_of[name]) == 1 else f"{prefix}{name}@{_shape_tag(shape)}"
        for name, shape in seen
    ]
    return Layout(tuple(keys), tuple(shape for _, shape in seen))


def global_key(global_layout: Layout, name: str, shape: tuple[int, ...], prefix: str = "") -> str | None:
    """The key under which ``name`` with ``shape`` lives in ``global_layout`` (None: absent)."""
    shapes = dict(zip(global_layout.names, global_layout.shapes))
    for key in (f"{prefix}{name}@{_shape_tag(shape)}", f"{prefix}{name}"):
        if key in shapes and tuple(shapes[key]) == tuple(shape):
            return key
    return None


def global_positions(global_layout: Layout, layout: Layout, prefix: str = "") -> np.ndarray:
    """Indices in a global vector where each element of a ``layout`` vector lives.

    Raises ``KeyError`` naming the first parameter the global state does not have.
    """
    parts = []
    for name, shape in zip(layout.names, layout.shapes):
        key = global_key(global_layout, name, tuple(shape), prefix)
        if key is None:
            raise KeyError(f"parameter {name!r} with shape {tuple(shape)} is not in the global state")
        sl = global_layout.slices[key]
        parts.append(np.arange(sl.start, sl.stop))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def family_prefix(global_layout: Layout, layout: Layout) -> str:
    """The ``fK/`` prefix of the architecture family whose keys match ``layout`` exactly
    (per-family global states, FedDF); ``""`` when keys are unprefixed."""
    prefixes = sorted({n.split("/", 1)[0] + "/" for n in global_layout.names if "/" in n})
    for prefix in prefixes:
        family = [n for n in global_layout.names if n.startswith(prefix)]
        if len(family) != len(layout.names):
            continue
        try:
            global_positions(global_layout, layout, prefix)
        except KeyError:
            continue
        return prefix
    return ""


def average_by_name(
    global_params: np.ndarray, global_layout: Layout, updates: Sequence[Update], per_family: bool = False
) -> np.ndarray:
    """The next global vector: each coordinate moves by the example-weighted mean delta of
    the participants that have it; coordinates nobody sent stay as they are.

    Like FedAvg/FedBuff, the normaliser is the plain example count (a stale update's
    ``weight`` below 1 pulls less). Vectorised: scatter each delta into one row of a
    stacked matrix, then two gemvs (numerator and per-coordinate count).
    """
    if not updates:
        raise ValueError("cannot aggregate an empty batch of updates")
    rows = np.zeros((len(updates), global_params.size), np.float32)
    has = np.zeros((len(updates), global_params.size), np.float32)
    for i, u in enumerate(updates):
        prefix = family_prefix(global_layout, u.layout) if per_family else ""
        pos = global_positions(global_layout, u.layout, prefix)
        rows[i, pos] = u.payload
        has[i, pos] = 1.0
    counts = np.array([max(u.num_examples, 1) for u in updates], np.float32)
    weights = np.array([u.weight for u in updates], np.float32)
    numerator = (counts * weights) @ rows
    denominator = counts @ has
    step = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
    return (global_params + step).astype(np.float32, copy=False)


def load_shared(model: LocalModel, part: Layout, state: GlobalState) -> np.ndarray:
    """Copy the shared part of ``state`` into ``model``; return those values.

    The first task of a participant that joins late is exactly this: a warm start of its
    shared part from whatever the others have learnt so far.
    """
    if not part.names:
        return np.zeros(0, np.float32)
    per_family = any("/" in n for n in state.layout.names)
    prefix = family_prefix(state.layout, model.layout) if per_family else ""
    values = np.array(state.params[global_positions(state.layout, part, prefix)], dtype=np.float32)
    model.set(values, part)
    return values


class SharedPartClient(PersonalClient):
    """Keep the personal part, load the shared part, train, send the shared part's delta.

    Without one global model the participant evaluates its own model on its test split
    and reports it with the update (``test_accuracy``). When everything is shared (FedDF)
    the model it holds after loading is the global one, so that is what it evaluates.
    """

    def work(self, model: LocalModel, state: GlobalState, work: Work) -> Result:
        self.restore(model)
        part = shared_part(model.layout, self.strategy.shares)
        start = load_shared(model, part, state)
        tested = model.evaluate() if self.strategy.shares == "all" else None
        metrics = self.train(model, work)
        payload = model.get(part) - start if part.names else np.zeros(0, np.float32)
        tested = tested or model.evaluate()
        self.keep(model)
        return Result(payload, part, with_test_metrics(metrics, tested))

    def train(self, model: LocalModel, work: Work) -> dict[str, float]:
        return model.train(work)


class PartialSharing(Strategy):
    """Shared machinery: ``shares`` says which parameters leave the participant; the
    global vector is the union of what is shared, so architectures may differ."""

    shares = "body"
    global_state = "parts"
    Client = SharedPartClient
    supports_private_aggregation = False  # layouts differ per participant
    supports_dp_sgd = False

    def aggregate(self, global_params: np.ndarray, updates: Sequence[Update]) -> np.ndarray:
        if self.context is None:
            raise RuntimeError(f"{self.name}: setup(context) before aggregating")
        return average_by_name(global_params, self.context.layout, updates)


class FedPer(PartialSharing):
    """Shared body, personal head (Arivazhagan et al., "Federated Learning with
    Personalization Layers", 2019)."""

    name = "fedper"
    shares = "body"


@dataclass(frozen=True)
class FedRepParams:
    head_epochs: int = 1
    """Local epochs fitting the personal head (body frozen) before the body epochs."""


class FedRepClient(SharedPartClient):
    """Fit the head with the body frozen, then the body with the head frozen."""

    def train(self, model: LocalModel, work: Work) -> dict[str, float]:
        head = model.train(Work(work.seed, self.params.head_epochs, work.steps), trainable="head.")
        body = model.train(Work(work.seed + 1, work.epochs, work.steps), trainable="body.")
        return {"train_loss": body["train_loss"], "head_loss": head["train_loss"],
                "samples": head["samples"] + body["samples"], "steps": head["steps"] + body["steps"]}

    def planned_samples(self, plan: Plan) -> int:
        return plan.pass_samples(self.params.head_epochs) + plan.pass_samples()  # head, then body


class FedRep(PartialSharing):
    """Shared body learned with a frozen personal head (Collins et al., "Exploiting
    Shared Representations for Personalized Federated Learning", ICML 2021): each task
    first fits the head for ``head_epochs`` with the body frozen, then the body for the
    group's ``local_epochs`` with the head frozen."""

    name = "fedrep"
    shares = "body"
    Params = FedRepParams
    Client = FedRepClient


class LGFedAvg(PartialSharing):
    """Shared head, personal body (Liang et al., "Think Locally, Act Globally", 2020)."""

    name = "lg_fedavg"
    shares = "head"


class LocalOnly(PartialSharing):
    """Nothing is shared: every participant trains alone. The baseline for personalised
    and heterogeneous methods; updates are empty, so the global state never changes."""

    name = "local"
    shares = "none"
