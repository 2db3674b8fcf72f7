"""Scaled weight-standardised convolution (NFNets §3 eq. 2, App. C).

Ŵ = γ_conv · gain · (W − mean) / sqrt(N · var), per output channel over the fan-in axes (H, W, I)
of the HWIO kernel, N = kh·kw·I/groups. The standardised kernel is computed at call time from
the stored raw kernel, so gradients flow through the standardisation (unlike ``nnx.WeightNorm``,
which rewrites the kernel in place).

Two epsilon conventions (see shared/reference/library-notes.md §1a):
- ``"deepmind"``: ``rsqrt(max(N·var, 1e-4))`` (deepmind-research/nfnets `base.WSConv2D`);
- ``"timm"``: ``rsqrt(N·(var + 1e-5))`` (timm `ScaledStdConv2d`, eps on the variance).
They agree for well-scaled kernels and diverge for small-variance ones (weight decay's regime).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from study.models import macs
from study.models.fan_in import fan_in_broadcast, fan_in_sum
from study.models.layers import constant_init, normal_init, pool_pads

WS_EPS = {"deepmind": 1e-4, "timm": 1e-5}
# Grouped convs with at most this many groups run as one dense conv per group on CPU.
SPLIT_GROUPS_MAX = 32
# On CPU, 1×1 convs run as one matmul over the pixels, and k×k convs whose output map has at most
# this many pixels as one matmul too (patch or whole-map).
IM2COL_MAX_PIXELS = 4


def standardize(kernel: jax.Array, gain: jax.Array, eps_style: str, gamma: float = 1.0) -> jax.Array:
    """Returns the scaled, standardised HWIO kernel (computed in float32)."""
    w = kernel.astype(jnp.float32)
    fan_in = math.prod(w.shape[:-1])
    mean = fan_in_sum(w) / fan_in
    centered = w - fan_in_broadcast(mean, w.shape)
    var = fan_in_sum(centered * centered) / fan_in
    if eps_style == "deepmind":
        inv = jax.lax.rsqrt(jnp.maximum(var * fan_in, WS_EPS["deepmind"]))
    elif eps_style == "timm":
        inv = jax.lax.rsqrt((var + WS_EPS["timm"]) * fan_in)
    else:
        raise ValueError(f"ws_eps: unknown {eps_style!r}; valid: deepmind, timm")
    return centered * fan_in_broadcast(inv * (gain.astype(jnp.float32) * gamma), w.shape)


def _patch_matmul(x: jax.Array, w: jax.Array, stride: int, pads: list[tuple[int, int]]) -> jax.Array:
    """The same convolution as one matmul over the k×k input patches (im2col)."""
    kh, kw, ci, co = w.shape
    xp = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    ho, wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    cols = [xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
            for i in range(kh) for j in range(kw)]  # (i, j, c) order = the HWIO kernel's reshape
    return jnp.concatenate(cols, -1) @ w.reshape(kh * kw * ci, co)


@functools.cache
def _taps(h: int, w: int, kh: int, kw: int, stride: int, pads: tuple[tuple[int, int], ...]
          ) -> np.ndarray:
    """(output pixel, kernel tap, input pixel) → 1 where the tap reads that pixel, else 0."""
    ho, wo = (h + sum(pads[0]) - kh) // stride + 1, (w + sum(pads[1]) - kw) // stride + 1
    t = np.zeros((ho * wo, kh * kw, h * w), np.float32)
    for p, (oh, ow) in enumerate(np.ndindex(ho, wo)):
        for k, (i, j) in enumerate(np.ndindex(kh, kw)):
            r, c = oh * stride + i - pads[0][0], ow * stride + j - pads[1][0]
            if 0 <= r < h and 0 <= c < w:
                t[p, k, r * w + c] = 1.0
    return t


def _map_matmul(x: jax.Array, w: jax.Array, stride: int, pads: list[tuple[int, int]]) -> jax.Array:
    """The same convolution as one matmul from the whole input map to the whole output map.

    The (H·W·I, Ho·Wo·O) matrix holds, for each (input, output) pixel pair, the one kernel tap
    that connects them or zeros, so padding costs nothing; every entry is a copy of a kernel
    entry, and its gradient sums the taps back through the same 0/1 tensor."""
    b, h, wd, ci = x.shape
    kh, kw, _, co = w.shape
    taps = _taps(h, wd, kh, kw, stride, tuple(map(tuple, pads)))
    ho = (h + sum(pads[0]) - kh) // stride + 1
    wo = taps.shape[0] // ho
    full = jnp.einsum("pkq,kio->qipo", taps.astype(w.dtype), w.reshape(kh * kw, ci, co))
    return (x.reshape(b, h * wd * ci) @ full.reshape(h * wd * ci, ho * wo * co)).reshape(b, ho, wo, co)


def _pointwise_matmul(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    """A 1×1 convolution as one (pixels, I) × (I, O) matmul over the (strided) pixels.

    XLA:CPU runs a convolution's kernel gradient as another convolution over the activation
    transposed to (C, H, W, N), and fuses the elementwise ops that produce the activation into
    that transpose: on a 2-core Intel Xeon, 42 such transposes took 7.0 of nf-resnet-nano's
    18.2 ms of kernel time per step (batch 256, 14 px), the two slowest reading their inputs
    N-strided at 8 ns an element. As a matmul the kernel gradient is a dot over the pixel
    axis, with no transpose. Measured (interleaved, same process): NF-ResNet-50 at 32 px,
    batch 32, 285 → 251 ms a step, NFNet-F0 666 → 574 ms, resnet-nano (batch 256, 14 px)
    20.1 → 17.2 ms; XLA's compile time unchanged (NFNet-F1: 36 s)."""
    if stride > 1:  # a 1×1 kernel never reads padding: 'same' and 'symmetric' pad nothing
        x = x[:, ::stride, ::stride]
    b, h, wd, ci = x.shape
    return (x.reshape(b * h * wd, ci) @ w.reshape(ci, w.shape[-1])).reshape(b, h, wd, -1)


def _dense(x: jax.Array, w: jax.Array, stride: int, pads: list[tuple[int, int]]) -> jax.Array:
    kh = w.shape[0]
    if kh == 1 and w.shape[1] == 1 and jax.default_backend() == "cpu":
        return _pointwise_matmul(x, w, stride)
    b, h, wd, ci = x.shape
    ho = (h + sum(pads[0]) - kh) // stride + 1
    wo = (wd + sum(pads[1]) - kh) // stride + 1
    if kh > 1 and ho * wo <= IM2COL_MAX_PIXELS and jax.default_backend() == "cpu":
        # XLA:CPU's k×k conv on a map of a few pixels (mostly padding) runs at 3-5 GFLOP/s
        # forward and input-gradient (NF-ResNet-50's 3×3 at 2×2 px, batch 32: 62 ms fwd+bwd as
        # a conv, 12.6 ms as a patch matmul). The patch matmul's input gradient (strided pads)
        # is itself slow on a large batch of thin maps (nano's 4×4×32 → 2×2, batch 1024: 22 ms
        # against 3.6 ms), where the whole-map matrix, no larger than one batch of inputs, wins.
        if h * wd * ci * ho * wo * w.shape[-1] <= b * h * wd * ci:
            return _map_matmul(x, w, stride, pads)
        return _patch_matmul(x, w, stride, pads)
    return jax.lax.conv_general_dilated(x, w, (stride, stride), pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv2d(
    x: jax.Array, w: jax.Array, stride: int, padding: str, groups: int = 1
) -> jax.Array:
    """NHWC × HWIO convolution with 'same' (TF) or 'symmetric' (PyTorch) padding; counts MACs."""
    kh = w.shape[0]
    pads = pool_pads(x.shape, kh, stride, padding)[1:3]
    w = w.astype(x.dtype)
    if groups == 1:
        out = _dense(x, w, stride, pads)
    elif groups <= SPLIT_GROUPS_MAX and jax.default_backend() == "cpu":
        # XLA:CPU runs grouped convolutions, and above all their kernel gradient, far slower
        # than dense ones (NFNet-F0's 6-group 3×3 at 16×16, batch 32: 51 s fwd+bwd grouped vs
        # 3.6 s as 6 dense convs; BENCHMARKS.md). Same sums per output channel.
        out = jnp.concatenate([
            _dense(xg, wg, stride, pads)
            for xg, wg in zip(jnp.split(x, groups, -1), jnp.split(w, groups, -1))
        ], axis=-1)
    else:
        out = jax.lax.conv_general_dilated(x, w, (stride, stride), pads,
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                           feature_group_count=groups)
    macs.record(out.shape[1] * out.shape[2] * math.prod(w.shape))
    return out


class WSConv2d(nnx.Module):
    """Weight-standardised conv with a learnable per-channel gain and a bias.

    ``gamma`` multiplies the standardised kernel: 1 when the activation carries its γ
    (DeepMind, timm ``dm_*``), the activation's γ when timm folds it into the conv
    (``gamma_in_act=False``). ``gain_init=0`` zero-initialises the gain (timm's alternative to
    SkipInit).
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, groups: int = 1,
        padding: str = "same", eps_style: str = "deepmind", gamma: float = 1.0,
        gain_init: float = 1.0, rngs: nnx.Rngs,
    ):
        if in_ch % groups or out_ch % groups:
            raise ValueError(f"groups: {groups} does not divide channels {in_ch}->{out_ch}")
        shape = (kernel, kernel, in_ch // groups, out_ch)
        # Fan-in init as the official code; WS makes the choice largely irrelevant.
        self.kernel = nnx.Param(normal_init(scale=1.0)(rngs.params(), shape))
        self.gain = nnx.Param(constant_init(gain_init)(None, (out_ch,)))
        self.bias = nnx.Param(constant_init(0.0)(None, (out_ch,)))
        self.stride, self.groups, self.padding = stride, groups, padding
        self.eps_style, self.gamma = eps_style, gamma

    def __call__(self, x: jax.Array) -> jax.Array:
        w = standardize(self.kernel[...], self.gain[...], self.eps_style, self.gamma)
        out = conv2d(x, w, self.stride, self.padding, self.groups)
        return out + self.bias[...].astype(out.dtype)


class Conv2d(nnx.Module):
    """Plain conv without bias (the BatchNorm networks'), He-normal init.

    ``groups`` as :class:`WSConv2d` (the BatchNorm NFNet's grouped 3×3s); the fan-out init is
    torchvision's, ``out_ch·k²`` whatever the grouping (PyTorch's ``kaiming_normal_``).
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, groups: int = 1,
        padding: str = "same", rngs: nnx.Rngs,
    ):
        if in_ch % groups or out_ch % groups:
            raise ValueError(f"groups: {groups} does not divide channels {in_ch}->{out_ch}")
        shape = (kernel, kernel, in_ch // groups, out_ch)
        std = math.sqrt(2.0 / (kernel * kernel * out_ch))  # He normal, fan-out (torchvision)
        self.kernel = nnx.Param(normal_init(std)(rngs.params(), shape))
        self.stride, self.groups, self.padding = stride, groups, padding

    def __call__(self, x: jax.Array) -> jax.Array:
        return conv2d(x, self.kernel[...], self.stride, self.padding, self.groups)
