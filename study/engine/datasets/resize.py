"""Bicubic resizing: PIL's (default) or a numpy copy of TensorFlow 2's ``tf.image.resize`` BICUBIC.

The official pipeline (``dataset.py:_preprocess_image`` / ``_decode_and_resize_then_crop``) calls
``tf.image.resize(image, size, BICUBIC)`` on uint8 images: with ``antialias=False`` (the default)
that is ``resize_bicubic(half_pixel_centers=True)`` -- Keys' cubic with a = -0.5, 4 taps, taps
outside the image get weight 0 and the rest are renormalised, no antialiasing when shrinking, and
a float32 result that is *not* clipped (the official comment notes values in [-51.1, 336.6]).

``method="pil"`` uses Pillow's BICUBIC (also a = -0.5, but it widens the kernel when shrinking,
i.e. antialiases, and rounds/clips to uint8): smoother than the official images when the crop is
larger than the output. ``method="tf"`` follows TF's kernel (``resize_bicubic_op.cc``: weights from
a 1024-entry table, the same border rule) and returns float32; it differs from TF only by float
summation order.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

METHODS = ("pil", "tf")
_TABLE_SIZE = 1024  # resize_bicubic_op.cc: kTableSize


def _keys_table(a: float = -0.5) -> np.ndarray:
    """``table[i] = (w(x), w(x + 1))`` for x = i / 1024, as ``InitCoeffsTable`` builds it."""
    x = np.arange(_TABLE_SIZE + 1, dtype=np.float64) / _TABLE_SIZE
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    x1 = x + 1.0
    far = ((a * x1 - 5 * a) * x1 + 8 * a) * x1 - 4 * a
    return np.stack([near, far], axis=1).astype(np.float32)


_TABLE = _keys_table()


def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, weights)``, each (out_size, 4), of TF's half-pixel Keys-cubic resampling."""
    scale = np.float32(in_size / out_size)  # CalculateResizeScale, align_corners=False
    loc = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    base = np.floor(loc).astype(np.int64)
    offset = np.rint((loc - base) * np.float32(_TABLE_SIZE)).astype(np.int64)  # lrintf
    w = np.stack([_TABLE[offset, 1], _TABLE[offset, 0],
                  _TABLE[_TABLE_SIZE - offset, 0], _TABLE[_TABLE_SIZE - offset, 1]], axis=1)
    idx = base[:, None] + np.arange(-1, 3)[None, :]
    inside = (idx >= 0) & (idx < in_size)
    w = np.where(inside, w, np.float32(0))  # outside taps weigh 0 ...
    total = w.sum(axis=1, keepdims=True)
    w = np.where(np.abs(total) >= 1000 * np.finfo(np.float32).tiny, w / total, w)  # ... renormalised
    return np.clip(idx, 0, in_size - 1), w.astype(np.float32)


def _resize_axis(x: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    idx, w = _taps(x.shape[axis], out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    out = np.zeros(x.shape[:axis] + (out_size,) + x.shape[axis + 1:], np.float32)
    for k in range(4):
        out += np.take(x, idx[:, k], axis=axis) * w[:, k].reshape(shape)
    return out


def resize_bicubic_tf(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """TF2 ``tf.image.resize(image, size, "bicubic")`` of an HWC image -> float32, unclipped."""
    x = np.asarray(image, dtype=np.float32)
    # Rows then columns: the kernel is separable; TF interpolates x first, but that only changes
    # float rounding.
    return _resize_axis(_resize_axis(x, size[0], 0), size[1], 1)


def resize_bicubic_pil(image: np.ndarray | Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Pillow BICUBIC resize to ``size`` = (height, width); uint8 stays uint8, floats stay float32."""
    hw = (size[1], size[0])  # PIL sizes are (width, height)
    if isinstance(image, Image.Image):
        return np.asarray(image.resize(hw, Image.Resampling.BICUBIC))
    if image.dtype == np.uint8:
        squeeze = image.ndim == 3 and image.shape[2] == 1
        im = Image.fromarray(image[..., 0] if squeeze else image)
        out = np.asarray(im.resize(hw, Image.Resampling.BICUBIC))
        return out[..., None] if squeeze else out
    # Float images: resize each channel as a 32-bit float ("F") image, which Pillow leaves unclipped.
    chans = image[..., None] if image.ndim == 2 else image
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(chans[..., c], np.float32), "F")
                      .resize(hw, Image.Resampling.BICUBIC)) for c in range(chans.shape[-1])]
    res = np.stack(out, axis=-1)
    return res[..., 0] if image.ndim == 2 else res


def resize_bicubic(image: np.ndarray | Image.Image, size: tuple[int, int], method: str = "pil") -> np.ndarray:
    """Bicubic resize of an HWC image to ``size`` = (height, width) with ``method`` "pil" or "tf"."""
    if method == "pil":
        return resize_bicubic_pil(image, size)
    if method == "tf":
        return resize_bicubic_tf(np.asarray(image), size)
    raise ValueError(f"resize method: unknown {method!r}; valid: {', '.join(METHODS)}")
