"""Training and evaluation input for a run config (grain).

Training batches are shaped (accum_steps, micro_batch, H, W, C) so the step can accumulate:
uint8 images (float32 after MixUp/CutMix without RandAugment), int32 labels and, when mixing,
``label_dist`` (the mixed label distribution). Normalisation happens on the device inside the
step. The grain iterator's state goes into every checkpoint, so a resumed run sees exactly the
batches an uninterrupted one would. Augmentations follow the official order (paper-recipe §4):
decode + Inception crop + flip (ImageNet) → batch ×2 → MixUp on one half / CutMix on the other
→ RandAugment after mixing; all off unless the config turns them on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np

from study.config import DATASET_CLASSES
from study.engine.datasets import arrays, cifar10, fashion_mnist, imagenet, preprocess
from study.engine.datasets.mix import MixBatch
from study.engine.datasets.randaugment import RandAugment

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclasses.dataclass
class Data:
    train: grain.MapDataset  # infinite, shuffled per epoch, batched (accum, micro, ...)
    train_size: int
    eval: grain.MapDataset  # batches of {"image", "label"}; the last one may be short
    eval_size: int
    num_classes: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    workers: int = 0


def _synthetic(cfg: dict[str, Any]) -> tuple[np.ndarray, ...]:
    # Class-dependent means so a model can learn it: a smoke-scale stand-in that needs no files.
    rng = np.random.default_rng(1234)
    n, s, c = cfg["synthetic_size"], cfg["image_size"] or 28, cfg["num_classes"]
    protos = rng.integers(0, 256, size=(c, s, s, 1)).astype(np.float32)

    def make(m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        r = np.random.default_rng(seed)
        y = r.integers(0, c, size=m).astype(np.int32)
        x = np.clip(protos[y] * 0.5 + r.normal(64, 40, size=(m, s, s, 1)), 0, 255).astype(np.uint8)
        return x, y

    return (*make(n, 1), *make(max(n // 4, c), 2))


def downsample(images: np.ndarray, size: int, key: str = "image_size") -> np.ndarray:
    """uint8 NHWC images area-averaged to ``size``×``size`` by a whole factor (exact, no kernel
    choice to document); ``size`` 0 or the native size returns them unchanged."""
    native = images.shape[1]
    if size in (0, native):
        return images
    if size > native or native % size:
        raise ValueError(f"{key}: {size} px must divide the native {native} px (e.g. {native // 2})")
    f = native // size
    pooled = images.reshape(len(images), size, f, size, f, images.shape[-1]).mean(axis=(2, 4))
    return np.round(pooled).astype(np.uint8)


class _ToUint8(grain.transforms.Map):
    """Clip and cast to uint8 before RandAugment, as the official pipeline does after mixing."""

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        return {**element, "image": np.clip(np.round(element["image"]), 0, 255).astype(np.uint8)}


class _Split(grain.transforms.Map):
    def __init__(self, accum: int):
        self.accum = accum

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        return {k: v.reshape((self.accum, v.shape[0] // self.accum) + v.shape[1:])
                for k, v in element.items()}


def build(cfg: dict[str, Any], train_resolution: int = 224, eval_resolution: int = 256, *,
          batched: bool = True) -> Data:
    """The train and eval datasets of ``cfg``; resolutions are used by ImageNet only (in-memory
    sets take ``image_size``: a whole-factor area downsampling of both splits). ``batched=False``
    reads in-memory sets element by element (what ``arrays.Batches`` is tested against)."""
    name, seed = cfg["dataset"], cfg["seed"]
    workers = 0
    if name in ("fashion_mnist", "cifar10", "synthetic"):
        if name == "fashion_mnist":
            (xtr, ytr), (xte, yte) = (fashion_mnist.load(s, cfg["data_dir"]) for s in ("train", "test"))
            classes, mean, std = DATASET_CLASSES[name], (fashion_mnist.MEAN,), (fashion_mnist.STD,)
        elif name == "cifar10":
            if cfg["data_dir"] is None:
                raise FileNotFoundError("data_dir: cifar10 needs data_dir (the cifar-10-batches-py folder)")
            (xtr, ytr), (xte, yte) = (cifar10.load(s, cfg["data_dir"]) for s in ("train", "test"))
            classes, mean, std = DATASET_CLASSES[name], CIFAR_MEAN, CIFAR_STD
        else:
            xtr, ytr, xte, yte = _synthetic(cfg)
            classes, mean, std = cfg["num_classes"], (0.5,), (0.25,)
        # A lower resolution (the local protocol's cost lever) downsamples both splits.
        xtr, xte = downsample(xtr, cfg["image_size"]), downsample(xte, cfg["image_size"])
        train = arrays.dataset(xtr, ytr, seed=seed, shuffle=True)
        evaluation = arrays.dataset(xte, yte, seed=seed, shuffle=False)
        sizes, channels = (len(ytr), len(yte)), xtr.shape[-1]
        if batched and not cfg["mixup_cutmix"] and not cfg["randaugment"]:
            # Whole batches by one indexing each: the same batches as the element pipeline below.
            nproc, pid = jax.process_count(), jax.process_index()
            train = grain.MapDataset.source(arrays.Batches(
                xtr, ytr, batch=cfg["batch_size"] // nproc, seed=seed, shuffle=True, repeat=True,
                stride=nproc, offset=pid)).map(_Split(cfg["accum_steps"]))
            evaluation = grain.MapDataset.source(arrays.Batches(
                xte, yte, batch=cfg["eval_batch_size"], seed=None, shuffle=False, repeat=False))
            return Data(train, sizes[0], evaluation, sizes[1], classes, channels, mean, std, workers)
    elif name == "imagenet":
        if cfg["data_dir"] is None:
            raise FileNotFoundError("data_dir: imagenet needs data_dir (train/ and val/, or ArrayRecords)")
        layout = cfg["imagenet_layout"]
        train = imagenet.dataset("train", directory=cfg["data_dir"], layout=layout, seed=seed)
        train = train.random_map(preprocess.DecodeInceptionCrop(train_resolution, resize="tf"))
        evaluation = imagenet.dataset("val", directory=cfg["data_dir"], layout=layout, shuffle=False)
        evaluation = evaluation.map(preprocess.DecodeResizeCrop(eval_resolution, resize="tf"))
        classes = len(imagenet.classes(cfg["data_dir"])) if layout == "folder" else DATASET_CLASSES[name]
        mean, std, channels = IMAGENET_MEAN, IMAGENET_STD, 3
        sizes = (len(train), len(evaluation))
        workers = cfg["data_workers"]
    else:  # pragma: no cover - rejected by config validation
        raise ValueError(f"dataset: unknown {name!r}")

    # Each process reads its own share of every batch (multi-host data parallel).
    nproc, pid = jax.process_count(), jax.process_index()
    batch = cfg["batch_size"] // nproc
    train = train.repeat(None)
    if nproc > 1:
        train = train[pid::nproc]
    if cfg["mixup_cutmix"]:
        train = train.batch(2 * batch, drop_remainder=True)
        train = train.random_map(MixBatch(classes, alpha=cfg["mix_alpha"]))
        if cfg["randaugment"]:
            train = train.map(_ToUint8()).random_map(RandAugment(*cfg["randaugment"]))
    else:
        if cfg["randaugment"]:
            train = train.random_map(RandAugment(*cfg["randaugment"]))
        train = train.batch(batch, drop_remainder=True)
    train = train.map(_Split(cfg["accum_steps"]))
    evaluation = evaluation.batch(cfg["eval_batch_size"], drop_remainder=False)
    return Data(train, sizes[0], evaluation, sizes[1], classes, channels, mean, std, workers)


def iterator(data: Data) -> grain.DatasetIterator:
    """The training iterator: threads for in-memory data, worker processes for decoding."""
    ds = data.train.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    if data.workers > 0:
        from absl import flags  # grain 0.2.18 reads an absl flag in workers (library-notes §0.3)

        flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.workers))
    return iter(ds)


def eval_batches(data: Data) -> Iterator[dict[str, np.ndarray]]:
    return iter(data.eval)
