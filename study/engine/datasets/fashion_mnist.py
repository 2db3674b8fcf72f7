"""Fashion-MNIST from its IDX files (Xiao, Rasul & Vollgraf 2017).

Default directory: Debian's ``dataset-fashion-mnist`` package, ``/usr/share/datasets/fashion-mnist``
(``make setup`` installs it where apt is usable). Files may be gzipped (as Debian ships them) or
plain. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import grain
import numpy as np

from study.engine.datasets import arrays

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
# Training-set statistics of pixel/255, for normalisation.
MEAN, STD = 0.2860, 0.3530


def _find(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"fashion-mnist: {directory / stem}(.gz) not found; install Debian's dataset-fashion-mnist "
        f"(apt-get install dataset-fashion-mnist) or set the data directory"
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"fashion-mnist: {path} is not an unsigned-byte IDX file")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"fashion-mnist: {path} is truncated inside its header")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"fashion-mnist: {path} holds {body.size} bytes, header says {dims}")
    return body.reshape(dims)


def load(split: str, directory: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 28, 28, 1), labels int32 (N,))`` of ``split`` ("train" or "test")."""
    if split not in FILES:
        raise ValueError(f"split: unknown {split!r}; valid: {', '.join(FILES)}")
    d = Path(directory) if directory is not None else DEFAULT_DIR
    if not d.is_dir():
        raise FileNotFoundError(
            f"fashion-mnist: directory {d} not found; install Debian's dataset-fashion-mnist "
            f"(apt-get install dataset-fashion-mnist) or set the data directory"
        )
    images = read_idx(_find(d, FILES[split][0]))
    labels = read_idx(_find(d, FILES[split][1])).astype(np.int32)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"fashion-mnist: {images.shape[0]} images but {labels.shape[0]} labels in {d}")
    return images[..., None], labels


def dataset(
    split: str, *, directory: str | os.PathLike | None = None, seed: int = 0, shuffle: bool = True,
) -> grain.MapDataset:
    """A grain ``MapDataset`` of ``{"image": uint8 (28,28,1), "label": int32}`` records.

    Shuffling is seeded and reshuffles every epoch (``.repeat()`` it for several epochs); the
    iterator state is checkpointable with the run.
    """
    images, labels = load(split, directory)
    return arrays.dataset(images, labels, seed=seed, shuffle=shuffle)
