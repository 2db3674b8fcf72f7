"""Training and evaluation input for a run config: grain for training, arrays for eval.

Training batches are uint8 images and int32 labels, shaped (accum_steps, micro_batch, H, W, C)
so the step can accumulate; normalisation happens on the device inside the step. The grain
iterator's state goes into every checkpoint, so a resumed run sees exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import numpy as np

from study.datasets import fashion_mnist


@dataclasses.dataclass
class Data:
    train: grain.MapDataset  # infinite, shuffled per epoch, batched
    train_size: int
    eval_images: np.ndarray
    eval_labels: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


class _Arrays:
    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"image": self.images[i], "label": self.labels[i]}


def _synthetic(cfg: dict[str, Any]) -> tuple[np.ndarray, ...]:
    # Class-dependent means so a model can learn it: a smoke-scale stand-in that needs no files.
    rng = np.random.default_rng(1234)
    n, s, c = cfg["synthetic_size"], cfg["image_size"], cfg["num_classes"]
    ch = 1
    protos = rng.integers(0, 256, size=(c, s, s, ch)).astype(np.float32)

    def make(m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        r = np.random.default_rng(seed)
        y = r.integers(0, c, size=m).astype(np.int32)
        x = np.clip(protos[y] * 0.5 + r.normal(64, 40, size=(m, s, s, ch)), 0, 255).astype(np.uint8)
        return x, y

    return (*make(n, 1), *make(max(n // 4, c), 2))


def build(cfg: dict[str, Any]) -> Data:
    if cfg["dataset"] == "fashion_mnist":
        xtr, ytr = fashion_mnist.load("train", cfg["data_dir"])
        xte, yte = fashion_mnist.load("test", cfg["data_dir"])
        classes, mean, std = 10, (fashion_mnist.MEAN,), (fashion_mnist.STD,)
    else:
        xtr, ytr, xte, yte = _synthetic(cfg)
        classes, mean, std = cfg["num_classes"], (0.5,), (0.25,)
    micro = cfg["batch_size"] // cfg["accum_steps"]
    ds = (
        grain.MapDataset.source(_Arrays(xtr, ytr))
        .seed(cfg["seed"])
        .shuffle()
        .repeat(None)
        .batch(cfg["batch_size"], drop_remainder=True)
        .map(lambda b: {k: v.reshape((cfg["accum_steps"], micro) + v.shape[1:]) for k, v in b.items()})
    )
    return Data(ds, len(ytr), xte, yte, classes, mean, std)


def iterator(data: Data) -> grain.DatasetIterator:
    # Threads, not worker processes: batches are slices of in-memory arrays.
    return data.train.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)).__iter__()
