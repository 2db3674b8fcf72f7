"""Batch-level MixUp and CutMix as the official NFNet input pipeline does them.

Paper App. A.3: MixUp (alpha = 0.2) on half of the batch and CutMix on the other half, applied
*before* RandAugment (``augment_before_mix=False``). Official ``dataset.py``:

- the loader batches **twice** the training batch and mixes it down to one batch: each output
  image consumes two input images. ``my_mixup_cutmix`` splits the 2B batch into quarters q1..q4:
  outputs [0, B/2) are MixUp of q1 (weight r) with q2 (weight 1 - r), r ~ Beta(alpha, alpha) per
  example; outputs [B/2, B) are CutMix: a box of q3 pasted onto q4, labels weighted by the box's
  area fraction. ``my_mixup`` / ``my_cutmix`` (modes "mixup" / "cutmix") mix the first half with
  the second.
- ``cutmix_padding``: box centre uniform over the pixels, side sqrt(1 - U) * size per axis (U
  uniform: Beta(1, 1)), half-sides rounded down, clipped at the border; ratio = mean of the mask.
- the loss (``experiment.py:_loss_fn``) uses ``ratio * onehot(label) + (1 - ratio) *
  onehot(mix_label)``; label smoothing comes after, in the trainer, not here. Train accuracy is
  measured against ``label`` (the first image's).

Note: since each step eats 2B images, "360 epochs" of 4096-image steps (112,602 steps) read
every ImageNet image about 720 times.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

MODES = ("mixup_cutmix", "mixup", "cutmix")


def cutmix_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A (height, width, 1) float32 0/1 mask, 1 inside the pasted box (``cutmix_padding``)."""
    r_x = int(rng.integers(0, width))
    r_y = int(rng.integers(0, height))
    side = np.sqrt(np.float32(1.0) - np.float32(rng.random()))
    r_w = int(side * np.float32(width))  # tf.cast(float -> int32) truncates
    r_h = int(side * np.float32(height))
    x1, x2 = np.clip([r_x - r_w // 2, r_x + r_w // 2], 0, width)
    y1, y2 = np.clip([r_y - r_h // 2, r_y + r_h // 2], 0, height)
    mask = np.zeros((height, width, 1), np.float32)
    mask[y1:y2, x1:x2] = 1.0
    return mask


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[labels]


def _mixup(images: np.ndarray, n: int, alpha: float, rng: np.random.Generator):
    """MixUp of images[:n] (weight r) with images[n:2n] -> (mixed, r)."""
    ratio = rng.beta(alpha, alpha, size=n).astype(np.float32)
    r = ratio[:, None, None, None]
    return r * images[:n] + (1.0 - r) * images[n:2 * n], ratio


def _cutmix(images: np.ndarray, n: int, rng: np.random.Generator):
    """A box of images[:n] pasted onto images[n:2n] -> (mixed, box area fraction)."""
    h, w = images.shape[1:3]
    mask = np.stack([cutmix_mask(h, w, rng) for _ in range(n)])
    return mask * images[:n] + (1.0 - mask) * images[n:2 * n], mask.mean(axis=(1, 2, 3))


def mix(
    batch: dict[str, np.ndarray], rng: np.random.Generator, *, num_classes: int,
    mode: str = "mixup_cutmix", alpha: float = 0.2,
) -> dict[str, np.ndarray]:
    """Mixes a batch of N images down to N/2 (pass twice the training batch size).

    ``batch``: ``{"image": (N, H, W, C) float32 or uint8, "label": int (N,)}`` with N divisible by
    4 ("mixup_cutmix") or 2 ("mixup", "cutmix"). Returns ``{"image": float32 (N/2, H, W, C),
    "label": int32 (N/2,) the first image's label, "label_dist": float32 (N/2, num_classes)}``;
    every ``label_dist`` row sums to 1. Images are not clipped or rounded (RandAugment does that).
    """
    if mode not in MODES:
        raise ValueError(f"mix mode: unknown {mode!r}; valid: {', '.join(MODES)}")
    images = np.asarray(batch["image"], np.float32)
    labels = np.asarray(batch["label"]).astype(np.int32)
    n = images.shape[0]
    parts = 4 if mode == "mixup_cutmix" else 2
    if n % parts or n == 0:
        raise ValueError(f"mix: {mode} needs a batch divisible by {parts}, got {n}")
    q = n // parts
    if mode == "mixup_cutmix":  # my_mixup_cutmix: q1 x q2 by MixUp, q3 x q4 by CutMix
        mixed_a, ratio_a = _mixup(images[:2 * q], q, alpha, rng)
        mixed_b, ratio_b = _cutmix(images[2 * q:], q, rng)
        out_images = np.concatenate([mixed_a, mixed_b])
        ratio = np.concatenate([ratio_a, ratio_b])
        first = np.concatenate([labels[:q], labels[2 * q:3 * q]])
        second = np.concatenate([labels[q:2 * q], labels[3 * q:]])
    else:
        out_images, ratio = (_mixup(images, q, alpha, rng) if mode == "mixup"
                             else _cutmix(images, q, rng))
        first, second = labels[:q], labels[q:]
    r = ratio.astype(np.float32)[:, None]
    dist = r * _one_hot(first, num_classes) + (1.0 - r) * _one_hot(second, num_classes)
    return {"image": out_images.astype(np.float32), "label": first, "label_dist": dist}


class MixBatch(grain.transforms.RandomMap):
    """:func:`mix` as a grain transform on batches: ``ds.batch(2 * B).random_map(MixBatch(1000))``."""

    def __init__(self, num_classes: int, mode: str = "mixup_cutmix", alpha: float = 0.2):
        if mode not in MODES:
            raise ValueError(f"mix mode: unknown {mode!r}; valid: {', '.join(MODES)}")
        self.num_classes, self.mode, self.alpha = num_classes, mode, alpha

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        return mix(element, rng, num_classes=self.num_classes, mode=self.mode, alpha=self.alpha)
