"""Messages that cross between the driver and the participants.

This is the only module both sides share, so it lives in ``strategies`` (which imports
neither ``orchestrator`` nor ``actors``) and both of them import it from here.

Parameters travel as one contiguous float32 vector plus a :class:`Layout` that says
which slice belongs to which named tensor. Aggregation then works on stacked vectors
instead of dictionaries of tensors, and a vector put into Ray's object store is read
zero-copy by every participant on the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np

PayloadKind = Literal["delta", "gradient", "logits"]
"""What a participant sends back.

- ``delta``: its locally trained parameters minus the global parameters it started from.
- ``gradient``: the gradient of its local loss at the global parameters (FedSGD).
- ``logits``: predictions on a shared public set (knowledge distillation).
"""


@dataclass(frozen=True)
class Layout:
    """Names and shapes of the tensors packed, in order, into one flat vector.

    >>> layout = Layout(("w", "b"), ((2, 3), (3,)))
    >>> layout.size, layout.slices["b"]
    (9, slice(6, 9, None))
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.shapes):
            raise ValueError(f"{len(self.names)} names but {len(self.shapes)} shapes")
        if len(set(self.names)) != len(self.names):
            raise ValueError("layout names must be unique")

    @cached_property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        return tuple(int(x) for x in np.concatenate([[0], np.cumsum(self.sizes)])[:-1])

    @property
    def size(self) -> int:
        return int(sum(self.sizes))

    @cached_property
    def slices(self) -> dict[str, slice]:
        return {n: slice(o, o + s) for n, o, s in zip(self.names, self.offsets, self.sizes)}

    def subset(self, names: Any) -> Layout:
        """The layout of only ``names``, in this layout's order."""
        keep = set(names)
        pairs = [(n, s) for n, s in zip(self.names, self.shapes) if n in keep]
        return Layout(tuple(n for n, _ in pairs), tuple(s for _, s in pairs))

    def positions_of(self, other: Layout) -> np.ndarray:
        """Indices into a vector of this layout where each element of ``other`` lives.

        ``other`` must be a subset of this layout with matching shapes; this is how a
        partial update (a shared body, say) is scattered into the full global vector.
        """
        parts = []
        for name, shape in zip(other.names, other.shapes):
            if name not in self.slices:
                raise KeyError(f"parameter {name!r} is not in the layout")
            if self.shapes[self.names.index(name)] != shape:
                raise ValueError(
                    f"parameter {name!r} has shape {shape}, "
                    f"layout has {self.shapes[self.names.index(name)]}"
                )
            sl = self.slices[name]
            parts.append(np.arange(sl.start, sl.stop))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


Sharing = Literal["all", "body", "head", "none"]
"""Which of a participant's parameters travel: every one, those named ``body.*`` or
``head.*`` (see ``actors/training/models.py``), or none."""


@dataclass
class GlobalState:
    """What the driver broadcasts: ``ray.put`` once per version, read by everyone.

    ``extra`` holds what the strategy's client half needs besides the parameters, as the
    strategy's :meth:`~strategies.base.Strategy.broadcast` returns it (SCAFFOLD's server
    control variate, say); empty for most strategies.
    """

    version: int
    params: np.ndarray
    layout: Layout
    extra: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Instructions:
    """How one participant should do one task; small, so it travels with the call.

    What the local work *is* comes from the strategy's client half, which the participant
    built from the run's strategy; these are only the per-task facts the driver decides.
    """

    task_id: int
    seed: int
    local_steps: int | None = None
    """Overrides the group's local work (``schedule.adaptive_local_work``)."""
    run_start: float = 0.0
    """The driver's epoch time at the start of the run: availability windows count from it."""
    seal: bool = False
    """Secure aggregation: keep the update in the actor and send only a receipt."""
    simulated_at: float | None = None
    """Under ``clock: simulated``: the simulated second the task starts (availability
    windows count from it); None under the wall clock."""
    simulated_seconds: float | None = None
    """Under ``clock: simulated``: how long the task lasts, fixed by the driver's system
    model when it dispatched the task; the participant does not sleep."""
    rollback_before: int | None = None
    """Where a resume from the run's latest checkpoint would roll the participant's private
    state back to (its newest version saved before this task id), so it keeps the versions
    from there on; None when the run writes no checkpoints (it keeps only the newest)."""
    expect_state: int | None = None
    """The task after which the participant last reported saving its private state: set up
    without it (a cleared temp directory, a restart on another node), it refuses the task
    rather than start afresh."""


@dataclass
class Update:
    """One participant's answer to one task.

    ``staleness`` and ``weight`` are filled in by the driver when the update arrives:
    staleness is ``current version - base_version`` and weight is the schedule's
    multiplier for it (1.0 in synchronous rounds, ``s(staleness)`` under FedBuff,
    ``alpha * s(staleness)`` under FedAsync). Strategies scale each update's
    contribution by ``weight``.
    """

    participant: str
    base_version: int
    kind: PayloadKind
    payload: np.ndarray
    layout: Layout
    num_examples: int
    task_id: int = -1
    metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    simulated_seconds: float = 0.0
    staleness: int = 0
    weight: float = 1.0
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    """Statistics beside the payload that the strategy declares in ``update_extras``
    (SCAFFOLD's control-variate change), each a float32 vector of the payload's size."""
    summed: bool = False
    """Its pool worker checked the payload and added it into the sum it sends for the round
    (``actors/participant/summing.py``); the payload itself stayed there (empty here)."""

    @property
    def nbytes(self) -> int:
        return int(self.payload.nbytes + sum(v.nbytes for v in self.extras.values()))
