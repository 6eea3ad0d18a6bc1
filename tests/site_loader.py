"""A site's own loader, used by tests as ``source: python`` with
``factory: "tests.site_loader:blobs"``: each site gets different, separable blobs."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def blobs(
    name: str, index: int, group: str, rows: int = 200, features: int = 8,
    num_classes: int = 3, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around centres shared by all sites (so one model fits every site);
    the rows drawn differ per site (seeded by ``seed + index``)."""
    centres = np.random.default_rng(seed).normal(0.0, 4.0, size=(num_classes, features))
    rng = np.random.default_rng(seed + index + 1)
    y = rng.integers(0, num_classes, size=rows)
    x = centres[y] + rng.normal(0.0, 0.5, size=(rows, features))
    return x.astype(np.float64), y.astype(np.int64)


class BlobDataset(Dataset):
    """The same blobs as a torch map-style dataset of ``(x, y)`` tensor pairs."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = torch.from_numpy(x).float(), torch.from_numpy(y)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def blobs_dataset(name: str, index: int, group: str, rows: int = 50, features: int = 8,
                  num_classes: int = 3, seed: int = 0) -> BlobDataset:
    return BlobDataset(*blobs(name, index, group, rows, features, num_classes, seed))


def split_blobs(name: str, index: int, group: str, rows: int = 200, test_rows: int = 40,
                features: int = 8, num_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``(x_train, y_train, x_test, y_test)``: the last ``test_rows`` rows are the test split."""
    x, y = blobs(name, index, group, rows + test_rows, features, num_classes, seed)
    return x[:rows], y[:rows], x[rows:], y[rows:]


def blobs_dict(name: str, index: int, group: str, rows: int = 30) -> dict[str, list]:
    """The blobs as plain lists in a dict (x, y only)."""
    x, y = blobs(name, index, group, rows)
    return {"x": x.tolist(), "y": y.tolist()}


def with_kwargs(name: str, **kwargs: object) -> tuple[list[list[float]], list[int]]:
    """Accepts any option; index and group arrive in ``kwargs``."""
    return [[float(kwargs["index"])], [1.0]], [0, 1]


def failing(name: str, index: int, group: str) -> None:
    raise RuntimeError(f"database for {name} is offline")


def not_arrays(name: str, index: int, group: str) -> set[int]:
    return {1, 2, 3}


def mismatched(name: str, index: int, group: str) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((5, 2)), np.zeros(4, np.int64)


def empty(name: str, index: int, group: str) -> tuple[list, list]:
    return [], []


def no_site_arguments(rows: int = 10) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((rows, 2)), np.zeros(rows, np.int64)


def needs_path(name: str, index: int, group: str, path: str) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((1, 2)), np.zeros(1, np.int64)


NOT_CALLABLE = 42


def blobs_except_odd(name: str, index: int, group: str) -> tuple[np.ndarray, np.ndarray]:
    """Blobs for even sites; odd sites fail to load (a site whose own loader is broken)."""
    if index % 2:
        raise ValueError(f"site {name}: cannot read its records")
    return blobs(name, index, group, rows=60)


def kills_its_process_at_site_1(name: str, index: int, group: str) -> tuple[np.ndarray, np.ndarray]:
    """Blobs, except that site 1's loader ends the process serving it (a crash in native
    code, an OOM kill): the pool worker dies in the middle of starting its participants."""
    if index == 1:
        import os

        os._exit(3)
    return blobs(name, index, group, rows=60)
