"""An in-memory (images, labels) pair as a grain random-access source."""

from __future__ import annotations

import grain
import numpy as np


class ArraySource:
    """``len`` and ``[i] -> {"image": images[i], "label": labels[i]}`` for grain."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"image": self.images[i], "label": self.labels[i]}


def dataset(images: np.ndarray, labels: np.ndarray, *, seed: int, shuffle: bool) -> grain.MapDataset:
    """Seeded, per-epoch reshuffling ``MapDataset`` over the arrays (``.repeat()`` for epochs)."""
    ds = grain.MapDataset.source(ArraySource(images, labels))
    return ds.seed(seed).shuffle() if shuffle else ds
