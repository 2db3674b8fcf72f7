"""RandAugment as the official NFNet code runs it (a port of the TF EfficientNet ``autoaugment.py``).

Paper App. A.3: RandAugment on every training image, after MixUp/CutMix; 4 layers, magnitude 5
(F0), 10 (F1, F2) or 15 (F3+). Official ``autoaugment.py:distort_image_with_randaugment``: per
layer one of 16 ops is picked uniformly and always applied (the sampled ``prob`` is unused by
every op) at the fixed magnitude; ``_MAX_LEVEL = 10``, so magnitude 15 goes 1.5x past "max";
``translate_const=100`` and ``cutout_const=40`` are pixels (not fractions of the image size);
empty pixels are filled with 128. Images are clipped to [0, 255] and truncated to uint8 first
(``dataset.py:_augment_image``).

Level -> argument (``level_to_arg``; level = magnitude, L = level / 10, +- = random sign, p=1/2):

============  ========================================  ====================================
op            argument                                  at 5 / 10 / 15
============  ========================================  ====================================
Rotate        +-30 L degrees (about the image centre)   15 / 30 / 45
ShearX/Y      +-0.3 L (origin at the top-left pixel)    0.15 / 0.3 / 0.45
TranslateX/Y  +-100 L pixels                            50 / 100 / 150
Posterize     keep int(4 L) high bits                   2 / 4 / 6 (weaker as M grows)
Solarize      threshold int(256 L), taken mod 256 *     128 / 0 (inverts all) / 128
SolarizeAdd   +int(110 L) to pixels < 128, clipped      55 / 110 / 165
Color, Contrast, Brightness, Sharpness: factor 1.8 L + 0.1       1.0 / 1.9 / 2.8
Cutout        square of side 2 int(40 L), centre uniform 40 / 80 / 120
AutoContrast, Equalize, Invert: no argument
============  ========================================  ====================================

Quirks of the official code kept on purpose (each checked against TF 2.4.1 + tensorflow-addons
0.12.1, the versions of the official requirements, see the tests' notes):

- * TF converts the Python threshold to uint8 and it wraps, so magnitude 10 inverts every
  pixel and 15 solarizes at 128 (an "intended" reading would make both no-ops).
- Posterize with 0 bits shifts by 8, which TF clamps to 7 (1 bit kept).
- Contrast blends towards a grey of value min(H*W/256, 255) (TF computes the "mean" as the sum
  of the 256-bin histogram / 256, i.e. the pixel count / 256), not the image's mean grey.
- Every float -> uint8 cast truncates; geometric ops use nearest-pixel sampling with
  round-half-away-from-zero, as ``ImageProjectiveTransformV2``.
"""

from __future__ import annotations

from typing import Any, Callable

import grain
import numpy as np

_MAX_LEVEL = 10.0
TRANSLATE_CONST = 100
CUTOUT_CONST = 40
FILL = 128
_F = np.float32
OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color",
       "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY",
       "Cutout", "SolarizeAdd")


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """float -> uint8 as ``tf.cast`` after a clip: truncation toward zero."""
    return np.clip(x, 0.0, 255.0).astype(np.uint8)


def blend(image1: np.ndarray, image2: np.ndarray, factor: float) -> np.ndarray:
    """image1 + factor (image2 - image1) in float32, clipped and truncated to uint8."""
    if factor == 0.0:
        return image1
    if factor == 1.0:
        return image2
    a = image1.astype(np.float32)
    return _to_uint8(a + _F(factor) * (image2.astype(np.float32) - a))


def _grayscale(image: np.ndarray) -> np.ndarray:
    """``tf.image.rgb_to_grayscale`` of uint8: via [0,1] floats, back with x * 255.5 truncated."""
    flt = image.astype(np.float32) * _F(1.0 / 255.0)
    gray = flt @ np.array([0.2989, 0.5870, 0.1140], np.float32)
    return (gray * _F(255.5)).astype(np.uint8)[..., None]


def autocontrast(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    for c in range(image.shape[2]):
        ch = image[..., c]
        lo, hi = _F(ch.min()), _F(ch.max())
        if hi > lo:  # a flat channel is left as is
            scale = _F(255.0) / (hi - lo)
            # The code reads x * scale + (-lo * scale); TF's graph optimiser hoists the common
            # factor to (x - lo) * scale, which rounds differently in float32 (checked: 0 of 350k
            # values differ from TF this way, ~20% the literal way).
            out[..., c] = _to_uint8((ch.astype(np.float32) - lo) * scale)
    return out


def equalize(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    for c in range(image.shape[2]):
        ch = image[..., c]
        hist = np.bincount(ch.ravel(), minlength=256).astype(np.int64)
        nonzero = hist[hist != 0]
        step = (nonzero.sum() - nonzero[-1]) // 255
        if step == 0:
            continue
        lut = (np.cumsum(hist) + step // 2) // step
        lut = np.clip(np.concatenate([[0], lut[:-1]]), 0, 255)
        out[..., c] = lut[ch]
    return out


def invert(image: np.ndarray) -> np.ndarray:
    return 255 - image


def posterize(image: np.ndarray, bits: int) -> np.ndarray:
    shift = min(max(8 - bits, 0), 7)  # TF's bitwise shifts clamp the amount to [0, 7] for uint8
    return ((image >> shift) << shift).astype(np.uint8)


def solarize(image: np.ndarray, threshold: int) -> np.ndarray:
    threshold %= 256  # the Python int becomes a uint8 tensor in TF and wraps (see the docstring)
    return np.where(image < threshold, image, 255 - image)


def solarize_add(image: np.ndarray, addition: int, threshold: int = 128) -> np.ndarray:
    added = np.clip(image.astype(np.int64) + addition, 0, 255).astype(np.uint8)
    return np.where(image < threshold, added, image)


def color(image: np.ndarray, factor: float) -> np.ndarray:
    return blend(np.repeat(_grayscale(image), 3, axis=2), image, factor)


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    grey = int(min(max(_F(h * w) / _F(256.0), 0.0), 255.0))  # the official "mean" (see docstring)
    return blend(np.full_like(image, grey), image, factor)


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
    return blend(np.zeros_like(image), image, factor)


def sharpness(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with PIL's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]] / 13); the border stays as is."""
    x = image.astype(np.float32)
    h, w = x.shape[:2]
    acc = np.zeros((h - 2, w - 2, x.shape[2]), np.float32)
    for dy in range(3):
        for dx in range(3):
            k = _F(5.0 / 13.0) if dy == dx == 1 else _F(1.0 / 13.0)
            acc += x[dy:dy + h - 2, dx:dx + w - 2] * k
    smooth = image.copy()
    smooth[1:-1, 1:-1] = _to_uint8(acc)
    return blend(smooth, image, factor)


def _transform(image: np.ndarray, a: tuple[float, ...], fill: int) -> np.ndarray:
    """Output (x, y) reads input (a0 x + a1 y + a2, a3 x + a4 y + a5): nearest, constant fill."""
    h, w = image.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = [_F(v) for v in a]
    in_x = (t[0] * xs + t[1] * ys + t[2]).astype(np.float64)
    in_y = (t[3] * xs + t[4] * ys + t[5]).astype(np.float64)
    # std::round: half away from zero (np.round would round half to even).
    rx = (np.sign(in_x) * np.floor(np.abs(in_x) + 0.5)).astype(np.int64)
    ry = (np.sign(in_y) * np.floor(np.abs(in_y) + 0.5)).astype(np.int64)
    inside = (rx >= 0) & (rx < w) & (ry >= 0) & (ry < h)
    out = image[np.clip(ry, 0, h - 1), np.clip(rx, 0, w - 1)]
    out[~inside] = fill
    return out


def rotate(image: np.ndarray, degrees: float, fill: int = FILL) -> np.ndarray:
    """``tfa.image.rotate`` by ``degrees`` about the centre ((W-1)/2, (H-1)/2)."""
    h, w = image.shape[:2]
    ang = _F(np.deg2rad(degrees))
    c, s = np.cos(ang, dtype=np.float32), np.sin(ang, dtype=np.float32)
    x_off = ((_F(w) - 1) - (c * (_F(w) - 1) - s * (_F(h) - 1))) / _F(2.0)
    y_off = ((_F(h) - 1) - (s * (_F(w) - 1) + c * (_F(h) - 1))) / _F(2.0)
    return _transform(image, (c, -s, x_off, s, c, y_off), fill)


def shear_x(image: np.ndarray, level: float, fill: int = FILL) -> np.ndarray:
    return _transform(image, (1.0, level, 0.0, 0.0, 1.0, 0.0), fill)


def shear_y(image: np.ndarray, level: float, fill: int = FILL) -> np.ndarray:
    return _transform(image, (1.0, 0.0, 0.0, level, 1.0, 0.0), fill)


def translate_x(image: np.ndarray, pixels: float, fill: int = FILL) -> np.ndarray:
    return _transform(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), fill)  # content moves left


def translate_y(image: np.ndarray, pixels: float, fill: int = FILL) -> np.ndarray:
    return _transform(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), fill)


def cutout(image: np.ndarray, pad_size: int, rng: np.random.Generator, fill: int = FILL) -> np.ndarray:
    """Fills a (2 pad_size)^2 square, centre uniform over the pixels, clipped at the border."""
    h, w = image.shape[:2]
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    out = image.copy()
    out[max(0, cy - pad_size):min(h, cy + pad_size), max(0, cx - pad_size):min(w, cx + pad_size)] = fill
    return out


def _signed(value: float, rng: np.random.Generator) -> float:
    return value if rng.random() >= 0.5 else -value  # _randomly_negate_tensor: floor(U + 0.5)


def apply_op(name: str, image: np.ndarray, level: float, rng: np.random.Generator, *,
             translate_const: float = TRANSLATE_CONST, cutout_const: float = CUTOUT_CONST,
             fill: int = FILL) -> np.ndarray:
    """Applies op ``name`` at ``level`` with the official ``level_to_arg`` mapping."""
    lv = level / _MAX_LEVEL
    enhance = lv * 1.8 + 0.1
    ops: dict[str, Callable[[], np.ndarray]] = {
        "AutoContrast": lambda: autocontrast(image),
        "Equalize": lambda: equalize(image),
        "Invert": lambda: invert(image),
        "Rotate": lambda: rotate(image, _signed(lv * 30.0, rng), fill),
        "Posterize": lambda: posterize(image, int(lv * 4)),
        "Solarize": lambda: solarize(image, int(lv * 256)),
        "SolarizeAdd": lambda: solarize_add(image, int(lv * 110)),
        "Color": lambda: color(image, enhance),
        "Contrast": lambda: contrast(image, enhance),
        "Brightness": lambda: brightness(image, enhance),
        "Sharpness": lambda: sharpness(image, enhance),
        "ShearX": lambda: shear_x(image, _signed(lv * 0.3, rng), fill),
        "ShearY": lambda: shear_y(image, _signed(lv * 0.3, rng), fill),
        "TranslateX": lambda: translate_x(image, _signed(lv * float(translate_const), rng), fill),
        "TranslateY": lambda: translate_y(image, _signed(lv * float(translate_const), rng), fill),
        "Cutout": lambda: cutout(image, int(lv * cutout_const), rng, fill),
    }
    if name not in ops:
        raise ValueError(f"RandAugment op: unknown {name!r}; valid: {', '.join(OPS)}")
    return ops[name]()


def randaugment(image: np.ndarray, rng: np.random.Generator, layers: int = 2, magnitude: float = 10,
                **kwargs: Any) -> np.ndarray:
    """``distort_image_with_randaugment`` of one HWC RGB image (uint8, or float: clipped and
    truncated first) -> uint8."""
    image = np.asarray(image)
    image = image if image.dtype == np.uint8 else _to_uint8(image)
    for _ in range(layers):
        name = OPS[int(rng.integers(0, len(OPS)))]
        image = apply_op(name, image, float(magnitude), rng, **kwargs)
    return image


class RandAugment(grain.transforms.RandomMap):
    """:func:`randaugment` on ``element["image"]``: one HWC image or a batch (BHWC) of them."""

    def __init__(self, layers: int = 2, magnitude: float = 10, *,
                 translate_const: float = TRANSLATE_CONST, cutout_const: float = CUTOUT_CONST,
                 fill: int = FILL):
        self.layers, self.magnitude = layers, magnitude
        self.kwargs = dict(translate_const=translate_const, cutout_const=cutout_const, fill=fill)

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = np.asarray(element["image"])
        if image.ndim == 4:
            out = np.stack([randaugment(im, rng, self.layers, self.magnitude, **self.kwargs)
                            for im in image])
        else:
            out = randaugment(image, rng, self.layers, self.magnitude, **self.kwargs)
        return {**element, "image": out}
