"""Model <-> flat float32 vector, the only form parameters take on the wire."""

from __future__ import annotations

import warnings

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
    with torch.no_grad():
        flat = torch.cat([params[n].detach().reshape(-1).float().cpu() for n in names])
    return flat.numpy()


def set_flat(model: nn.Module, flat: np.ndarray, layout: Layout) -> None:
    """Load a vector (possibly a read-only object-store view) into the named parameters."""
    if flat.size != layout.size:
        raise ValueError(f"vector has {flat.size} values, layout needs {layout.size}")
    params = dict(model.named_parameters())
    with warnings.catch_warnings():
        # Object-store arrays are read-only; we only read from this view.
        warnings.simplefilter("ignore", UserWarning)
        source = torch.from_numpy(np.asarray(flat, dtype=np.float32))
    with torch.no_grad():
        for name, sl, shape in zip(layout.names, layout.slices.values(), layout.shapes):
            params[name].copy_(source[sl].view(shape))
