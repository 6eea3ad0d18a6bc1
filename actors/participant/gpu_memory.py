"""Per-participant GPU memory caps for participants that share a card.

Ray's fractional ``num_gpus`` only schedules: nothing stops one participant on a
shared card from taking all its memory and making its neighbours fail. Each
participant therefore caps its own process's CUDA allocator at its share of the card,
and the driver checks before starting that the caps of participants placed on one card
fit on it. The arithmetic here imports no torch, so config validation stays fast.
"""

from __future__ import annotations

import re
from typing import Any

CONTEXT_GB = 0.5
"""Card memory each process needs outside its allocator's cap (its CUDA context, cuBLAS
workspaces): caps that sum to the whole card would leave none for it."""


def memory_cap_fraction(num_gpus: float, gpu_memory_gb: float | None, total_gb: float) -> float:
    """The participant's memory cap as a fraction of its card: ``gpu_memory_gb / total_gb``
    when given, else its ``num_gpus`` share less :data:`CONTEXT_GB` for its process's
    CUDA context when it shares the card (a whole card or more gives 1.0: the
    allocator's fraction is per card).

    >>> memory_cap_fraction(0.25, None, 80.0)
    0.24375
    >>> memory_cap_fraction(0.25, 20.0, 80.0)
    0.25
    """
    if num_gpus <= 0:
        raise ValueError(f"num_gpus={num_gpus:g}: a GPU memory cap needs num_gpus > 0")
    if total_gb <= 0:
        raise ValueError(f"the card's memory total_gb={total_gb:g} must be > 0")
    if gpu_memory_gb is None:
        if num_gpus >= 1:
            return 1.0
        if num_gpus * total_gb <= CONTEXT_GB:
            raise ValueError(f"num_gpus={num_gpus:g} of a {total_gb:g} GB card leaves no room beside "
                             f"the process's CUDA context ({CONTEXT_GB:g} GB)")
        return float(num_gpus) - CONTEXT_GB / total_gb
    if gpu_memory_gb <= 0:
        raise ValueError(f"gpu_memory_gb={gpu_memory_gb:g} must be > 0")
    if gpu_memory_gb > total_gb:
        raise ValueError(f"gpu_memory_gb={gpu_memory_gb:g} exceeds the card's {total_gb:g} GB")
    return gpu_memory_gb / total_gb


def _place(requests: list[tuple[str, float, float | None]], gpus: int) -> list[list[int]] | str:
    """First-fit of each request's ``num_gpus`` onto cards, as Ray packs fractional GPUs
    (a card's fractions sum to at most 1; whole numbers take whole free cards). Returns
    the requests' indices per card, or why they do not fit."""
    load = [0.0] * gpus
    cards: list[list[int]] = [[] for _ in range(gpus)]
    for i, (name, num_gpus, _) in enumerate(requests):
        if num_gpus > 1 and num_gpus != int(num_gpus):
            return f"{name}: num_gpus={num_gpus:g}: above 1 Ray takes whole cards only"
        if num_gpus >= 1:
            free = [c for c in range(gpus) if load[c] == 0][: int(num_gpus)]
            if len(free) < num_gpus:
                return f"{name}: num_gpus={num_gpus:g} needs more whole free cards than the {gpus} card(s) have left"
        else:
            fits = [c for c in range(gpus) if load[c] + num_gpus <= 1 + 1e-9]
            if not fits:
                return f"{name}: num_gpus={num_gpus:g} does not fit on any of the {gpus} card(s)"
            free = fits[:1]
        for c in free:
            load[c] += min(num_gpus, 1.0)
            cards[c].append(i)
    return cards


def caps_fit(requests: list[tuple[str, float, float | None]], gpu_total_gb: float, gpus: int) -> str | None:
    """Pre-flight: would the memory caps of participants Ray places on one card fit on it?

    ``requests`` are ``(name, num_gpus, gpu_memory_gb)``; participants with
    ``num_gpus`` 0 use no GPU. Placement follows ``num_gpus`` (what Ray schedules by),
    then each card's caps must sum to at most ``gpu_total_gb``. None if they fit, else
    a message naming the participants, their caps and the card size. Each process on a
    shared card also needs :data:`CONTEXT_GB` beside its cap.

    >>> caps_fit([("a", 0.5, 30.0), ("b", 0.5, 30.0)], 80.0, 1) is None
    True
    >>> print(caps_fit([("a", 0.5, 50.0), ("b", 0.5, 50.0)], 80.0, 1))
    card 0 (80 GB) holds a (50 GB), b (50 GB): their memory caps sum to 100 GB, with 0.5 GB per process for its CUDA context 101 GB > 80 GB; lower gpu_memory_gb or raise num_gpus so fewer share a card
    """
    caps: list[float] = []
    for name, num_gpus, gb in requests:
        if num_gpus <= 0 and gb is not None:
            return f"{name}: gpu_memory_gb={gb:g} needs num_gpus > 0"
        try:
            caps.append(memory_cap_fraction(num_gpus, gb, gpu_total_gb) * gpu_total_gb if num_gpus > 0 else 0.0)
        except ValueError as exc:
            return f"{name}: {exc}"
    on_gpu = [i for i, r in enumerate(requests) if r[1] > 0]
    cards = _place([requests[i] for i in on_gpu], gpus)
    if isinstance(cards, str):
        return cards
    for c, members in enumerate(cards):
        total = sum(caps[on_gpu[i]] for i in members)
        if len(members) > 1 and total + len(members) * CONTEXT_GB > gpu_total_gb * (1 + 1e-9):
            names = ", ".join(f"{requests[on_gpu[i]][0]} ({caps[on_gpu[i]]:g} GB)" for i in members)
            return (f"card {c} ({gpu_total_gb:g} GB) holds {names}: their memory caps sum to "
                    f"{total:g} GB, with {CONTEXT_GB:g} GB per process for its CUDA context "
                    f"{total + len(members) * CONTEXT_GB:g} GB > {gpu_total_gb:g} GB; lower gpu_memory_gb "
                    "or raise num_gpus so fewer share a card")
    return None


def apply_cap(fraction: float, device: Any) -> None:
    """Cap this process's CUDA caching allocator on ``device`` at ``fraction`` of the
    card, so an allocation past it raises OutOfMemoryError here instead of starving the
    card's other participants. No-op for a CPU device."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return
    torch.cuda.set_per_process_memory_fraction(fraction, device)


_TRIED = re.compile(r"Tried to allocate (\d+(?:\.\d+)?\s*[KMGT]i?B)")


def describe_oom(name: str, cap_gb: float, exc: BaseException) -> str:
    """Say which participant ran out of memory, under which cap and asking for how much,
    instead of torch's message that names neither the participant nor its cap.

    An error raised training alone after its batch ran out of memory too carries the
    batch's names (``exc.cohort``, set by :mod:`actors.participant.cohort`), and the message says so.

    >>> describe_oom("site-3", 2.0, RuntimeError("CUDA out of memory. Tried to allocate 1.50 GiB"))
    'site-3 ran out of GPU memory under its cap of 2 GB: it tried to allocate 1.50 GiB; raise its gpu_memory_gb or num_gpus, or lower batch_size'
    """
    match = _TRIED.search(str(exc))
    asked = f": it tried to allocate {match.group(1)}" if match else f" ({type(exc).__name__})"
    cohort = getattr(exc, "cohort", None)
    alone = (f" training alone, after its batch of {len(cohort)} ({', '.join(cohort[:8])}"
             f"{', ...' if len(cohort) > 8 else ''}) ran out together" if cohort else "")
    return (f"{name} ran out of GPU memory under its cap of {cap_gb:g} GB{alone}{asked}; "
            "raise its gpu_memory_gb or num_gpus, or lower batch_size")
