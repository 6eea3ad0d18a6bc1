"""Model <-> flat float32 vector, the only form parameters take on the wire."""

from __future__ import annotations

import threading
import warnings
import weakref

import numpy as np
import torch
from torch import nn

from strategies.types import Layout


def layout_of(model: nn.Module) -> Layout:
    """Trainable parameters in registration order (buffers are not shared)."""
    named = [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
    return Layout(tuple(n for n, _ in named), tuple(s for _, s in named))


def get_flat(model: nn.Module, layout: Layout | None = None) -> np.ndarray:
    """Copy the parameters named in ``layout`` (all, by default) into one float32 vector."""
    params = dict(model.named_parameters())
    names = layout.names if layout is not None else [n for n, p in params.items() if p.requires_grad]
    with torch.no_grad():  # joined on the model's device: one copy to the host, not one per tensor
        flat = torch.cat([params[n].detach().reshape(-1).float() for n in names]).cpu()
    return flat.numpy()


def set_flat(model: nn.Module, flat: np.ndarray | torch.Tensor, layout: Layout) -> None:
    """Load a vector (possibly a read-only object-store view, or a tensor already on the
    model's device) into the named parameters."""
    size = flat.numel() if isinstance(flat, torch.Tensor) else flat.size
    if size != layout.size:
        raise ValueError(f"vector has {size} values, layout needs {layout.size}")
    params = dict(model.named_parameters())
    source = flat if isinstance(flat, torch.Tensor) else _from_numpy(flat)
    with torch.no_grad():
        for name, sl, shape in zip(layout.names, layout.slices.values(), layout.shapes):
            params[name].copy_(source[sl].view(shape))


def _from_numpy(flat: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        # Object-store arrays are read-only; we only read from this view.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(flat, dtype=np.float32))


_on_device: dict[torch.device, tuple[weakref.ref, torch.Tensor | None]] = {}
_on_device_lock = threading.Lock()


def on_device(flat: np.ndarray, device: torch.device) -> np.ndarray | torch.Tensor:
    """``flat`` ready for :func:`set_flat` on ``device``. A pool worker starts every
    participant it trains in a round from the same global vector: on a GPU that vector
    is copied to the card once, not once per participant (16 participants of a 5.3M-
    parameter model would copy 340 MB a round). The copy is made the second time the
    same array is asked for (a dedicated participant, one task per state, never holds
    one), reused while that array lives and no other has been asked for since, and
    made only for read-only arrays (the object store's): a writable one could change in
    place between two calls."""
    if device.type == "cpu" or flat.flags.writeable:
        return flat
    with _on_device_lock:
        ref, tensor = _on_device.get(device, (None, None))
        if ref is None or ref() is not flat:  # asked once so far: a dedicated participant's
            _on_device[device] = (weakref.ref(flat), None)  # every task; no extra card memory
            return flat
        if tensor is None:
            tensor = _from_numpy(flat).to(device)
            _on_device[device] = (ref, tensor)
        return tensor
