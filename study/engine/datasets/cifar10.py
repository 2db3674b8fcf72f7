"""CIFAR-10 from its python-pickle batches (Krizhevsky 2009).

The directory is the unpacked ``cifar-10-python.tar.gz``: ``data_batch_1`` .. ``data_batch_5`` and
``test_batch``, each a pickled dict with ``b"data"`` (N, 3072) uint8, every row the 1024 red, then
1024 green, then 1024 blue values of a 32x32 image in row-major order, and ``b"labels"`` (N,) ints.
Its parent (holding ``cifar-10-batches-py/``) is accepted too. Nothing is downloaded.

CIFAR-10 is not in the NFNet paper (Brock et al. 2021 report ImageNet only); the harness uses it
as a small, quick stand-in with the same record format as :mod:`study.datasets.fashion_mnist`.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import grain
import numpy as np

from study.engine.datasets import arrays

SUBDIR = "cifar-10-batches-py"
FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Training-set per-channel statistics of pixel/255 (the values commonly quoted for CIFAR-10).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def _resolve(directory: str | os.PathLike) -> Path:
    d = Path(directory)
    if not (d / FILES["test"][0]).is_file() and (d / SUBDIR).is_dir():
        d = d / SUBDIR  # the parent of the unpacked archive was given
    if not d.is_dir():
        raise FileNotFoundError(f"cifar10: directory {d} not found; unpack cifar-10-python.tar.gz there")
    return d


def read_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch file -> ``(uint8 (N, 32, 32, 3), int32 (N,))``."""
    with open(path, "rb") as f:
        # The official files were pickled by Python 2; encoding="bytes" keeps their keys as bytes.
        d = pickle.load(f, encoding="bytes")
    try:
        data, labels = d[b"data"], d[b"labels"]
    except (KeyError, TypeError):
        raise ValueError(f"cifar10: {path} has no b'data'/b'labels' entries") from None
    data = np.asarray(data, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int32)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"cifar10: {path} holds data {data.shape} and labels {labels.shape}")
    # Rows are channel-planar (CHW flattened); the harness wants HWC.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load(split: str, directory: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 32, 32, 3), labels int32 (N,))`` of ``split`` ("train" or "test")."""
    if split not in FILES:
        raise ValueError(f"split: unknown {split!r}; valid: {', '.join(FILES)}")
    d = _resolve(directory)
    parts = []
    for name in FILES[split]:
        if not (d / name).is_file():
            raise FileNotFoundError(f"cifar10: {d / name} not found; unpack cifar-10-python.tar.gz there")
        parts.append(read_batch(d / name))
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    labels = np.concatenate([p[1] for p in parts])
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(f"cifar10: labels outside [0, {len(CLASSES)}) in {d}")
    return images, labels


def dataset(
    split: str, *, directory: str | os.PathLike, seed: int = 0, shuffle: bool = True,
) -> grain.MapDataset:
    """A grain ``MapDataset`` of ``{"image": uint8 (32,32,3), "label": int32}`` records.

    Shuffling is seeded and reshuffles every epoch (``.repeat()`` it for several epochs).
    """
    images, labels = load(split, directory)
    return arrays.dataset(images, labels, seed=seed, shuffle=shuffle)
