"""Per-image ImageNet preprocessing as grain transforms: decode + crop + flip + resize, normalise.

Follows the official ``dataset.py`` (deepmind-research/nfnets) and the paper's App. A.1:

- train (:class:`DecodeInceptionCrop`): ``_decode_and_random_crop`` -- a crop sampled like TF's
  ``sample_distorted_bounding_box`` (min_object_covered 0.1, aspect ratio [3/4, 4/3], area
  [0.08, 1.0], 10 attempts), falling back to ``_decode_and_center_crop`` when it returns the whole
  image -- then ``random_flip_left_right``, then a bicubic resize to size x size.
- eval (:class:`DecodeResizeCrop`): ``eval_preproc="resize_crop_32"`` =
  ``_decode_and_resize_then_crop``: bicubic resize of *both* sides to S+32 (the aspect ratio is
  not kept), then the centre S x S crop.
- :class:`Normalize`: ``_normalize_image``, (x - 255*mean) / (255*std) with the ImageNet values.

The resize is Pillow's by default (uint8 out); ``resize="tf"`` copies TF's non-antialiased kernel
and yields unclipped float32 as the official pipeline does (see :mod:`study.datasets.resize`).
Inputs may be encoded image bytes or decoded uint8 HWC arrays; all randomness comes from the
``np.random.Generator`` grain passes to ``random_map``, so a seeded pipeline is reproducible.
"""

from __future__ import annotations

import io
from typing import Any

import grain
import numpy as np
from PIL import Image

from study.engine.datasets.resize import METHODS, resize_bicubic

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # dataset.py: MEAN_RGB
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)  # dataset.py: STDDEV_RGB
_F = np.float32  # the TF kernel computes in C++ float


def decode(image: bytes | np.ndarray) -> Image.Image:
    """Encoded bytes (JPEG, PNG, ...) or a uint8 HWC array -> an RGB PIL image."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        im = Image.open(io.BytesIO(image))
    else:
        a = np.asarray(image)
        im = Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a)
    # decode_jpeg(channels=3): grey and CMYK images become RGB.
    return im if im.mode == "RGB" else im.convert("RGB")


def sample_distorted_bounding_box(
    height: int, width: int, rng: np.random.Generator, *, min_object_covered: float = 0.1,
    aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
    area_range: tuple[float, float] = (0.08, 1.0), max_attempts: int = 10,
) -> tuple[int, int, int, int]:
    """``(y, x, h, w)`` drawn as TF's ``sample_distorted_bounding_box`` with the whole image as box.

    Copy of ``sample_distorted_bounding_box_op.cc``: per attempt an aspect ratio is drawn uniformly,
    then the *height* (not the area) uniformly among the integers allowed by the area range, the
    width is round(h * ratio), and the offsets uniformly in [0, H - h) and [0, W - w). A crop must
    cover >= min_object_covered of the image, so with 0.1 the effective minimum area is 10%, not
    8%. After ``max_attempts`` failures the whole image is returned.
    """
    lo_ar, hi_ar = _F(aspect_ratio_range[0]), _F(aspect_ratio_range[1])
    for _ in range(max_attempts):
        aspect = _F(rng.random()) * (hi_ar - lo_ar) + lo_ar
        crop = _generate_random_crop(width, height, area_range, aspect, rng)
        if crop is None:
            continue
        y, x, h, w = crop
        # SatisfiesOverlapConstraints: the box is the whole image, so coverage = crop area / image.
        if h * w >= 1 and _F(h * w) / _F(height * width) >= _F(min_object_covered):
            return crop
    return 0, 0, height, width


def _generate_random_crop(width: int, height: int, area_range: tuple[float, float],
                          aspect: np.float32, rng: np.random.Generator) -> tuple[int, int, int, int] | None:
    min_area = _F(area_range[0]) * _F(width) * _F(height)
    max_area = _F(area_range[1]) * _F(width) * _F(height)
    h = int(np.rint(np.sqrt(min_area / aspect)))  # lrintf rounds half to even, as np.rint
    max_h = int(np.rint(np.sqrt(max_area / aspect)))
    if int(np.rint(_F(max_h) * aspect)) > width:
        # The largest max_h with round(max_h * aspect) <= width (double arithmetic in the C++).
        max_h = int((width + 0.5 - float(_F(1e-7))) / float(aspect))
        if int(np.rint(_F(max_h) * aspect)) > width:
            max_h -= 1
    max_h = min(max_h, height)
    h = min(h, max_h)
    if h < max_h:
        h += int(rng.integers(0, max_h - h + 1))
    w = int(np.rint(_F(h) * aspect))
    area = _F(w * h)
    if area < min_area:  # rounding pushed the area out of range: one step bigger ...
        h += 1
        w = int(np.rint(_F(h) * aspect))
        area = _F(w * h)
    if area > max_area:  # ... or one step smaller
        h -= 1
        w = int(np.rint(_F(h) * aspect))
        area = _F(w * h)
    if area < min_area or area > max_area or w > width or h > height or w <= 0 or h <= 0:
        return None
    y = int(rng.integers(0, height - h)) if h < height else 0
    x = int(rng.integers(0, width - w)) if w < width else 0
    return y, x, h, w


def center_crop_window(height: int, width: int, size: int, pad: int = 32) -> tuple[int, int, int, int]:
    """``(y, x, h, w)`` of ``_decode_and_center_crop``: the central crop with the aspect of the
    output, scaled so that the short side is ``size / (size + pad)`` of the image's."""
    scale = min(_F(height) / _F(size + pad), _F(width) / _F(size + pad))
    ch = cw = int(_F(scale) * _F(size))
    return ((height - ch) + 1) // 2, ((width - cw) + 1) // 2, ch, cw


def inception_crop(image: bytes | np.ndarray, size: int, rng: np.random.Generator,
                   resize: str = "pil") -> np.ndarray:
    """The official train preprocessing of one image -> (size, size, 3) uint8 (or float32 with
    ``resize="tf"``)."""
    im = decode(image)
    h_img, w_img = im.height, im.width
    y, x, h, w = sample_distorted_bounding_box(h_img, w_img, rng)
    if (h, w) == (h_img, w_img):
        # _decode_and_random_crop: a crop as large as the image means sampling failed.
        y, x, h, w = center_crop_window(h_img, w_img, size)
    im = im.crop((x, y, x + w, y + h))
    if rng.random() < 0.5:  # tf.image.random_flip_left_right, before the resize as in the code
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return resize_bicubic(im if resize == "pil" else np.asarray(im), (size, size), resize)


def resize_then_center_crop(image: bytes | np.ndarray, size: int, pad: int = 32,
                            resize: str = "pil") -> np.ndarray:
    """``_decode_and_resize_then_crop(crop_pct=pad)``: resize to (size+pad, size+pad), ignoring the
    aspect ratio, then take the centre size x size."""
    im = decode(image)
    big = size + pad
    out = resize_bicubic(im if resize == "pil" else np.asarray(im), (big, big), resize)
    off = ((big - size) + 1) // 2
    return out[off:off + size, off:off + size]


def _check_method(resize: str) -> None:
    if resize not in METHODS:
        raise ValueError(f"resize method: unknown {resize!r}; valid: {', '.join(METHODS)}")


class DecodeInceptionCrop(grain.transforms.RandomMap):
    """Train preprocessing (App. A.1, ``dataset.py:_decode_and_random_crop``): decode, distorted
    bounding-box crop, random horizontal flip, bicubic resize to ``size`` x ``size``."""

    def __init__(self, size: int, resize: str = "pil"):
        _check_method(resize)
        self.size, self.resize = size, resize

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        return {**element, "image": inception_crop(element["image"], self.size, rng, self.resize)}


class DecodeResizeCrop(grain.transforms.Map):
    """Eval preprocessing (App. A.1, ``eval_preproc="resize_crop_32"``): bicubic resize of both
    sides to ``size + pad``, then the centre ``size`` x ``size`` crop. No randomness."""

    def __init__(self, size: int, pad: int = 32, resize: str = "pil"):
        _check_method(resize)
        self.size, self.pad, self.resize = size, pad, resize

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        image = resize_then_center_crop(element["image"], self.size, self.pad, self.resize)
        return {**element, "image": image}


class Normalize(grain.transforms.Map):
    """``(image - mean) / std`` per channel -> float32 (``dataset.py:_normalize_image``).

    Works on one image or a batch (the channel axis is last). Defaults: ImageNet, in 0..255 units.
    """

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        image = (np.asarray(element["image"], np.float32) - self.mean) / self.std
        return {**element, "image": image}
