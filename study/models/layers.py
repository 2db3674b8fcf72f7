"""Small shared layers: a MAC-counted Linear, stochastic depth, and the pools.

The pools follow the official code: Haiku's ``avg_pool(..., 'SAME')`` averages over the valid
(unpadded) elements, which is also what timm's ``AvgPool2d(ceil_mode=True,
count_include_pad=False)`` does; the max-pool pads with -inf.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from study.models import macs


class Linear(nnx.Linear):
    """``nnx.Linear`` that reports its multiply-accumulates to :mod:`study.models.macs`.

    Default init: Haiku's Linear default (``N(0, 1/fan_in)``, the paper's "LeCun init"), zero bias.
    """

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs, **kw):
        kw.setdefault("kernel_init", normal_init(scale=1.0))
        kw.setdefault("bias_init", constant_init(0.0))
        super().__init__(in_features, out_features, rngs=rngs, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        macs.record(self.in_features * self.out_features)
        return super().__call__(x)


class StochasticDepth(nnx.Module):
    """Drops the whole residual branch per example with probability ``rate``.

    As the official code (`base.StochDepth`, scale_by_keep=False): no 1/keep rescaling at train
    time and identity at eval. ``scale_by_keep=True`` gives the timm/EfficientNet form.
    """

    def __init__(self, rate: float, *, scale_by_keep: bool = False, rngs: nnx.Rngs):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"stochdepth_rate: must be in [0, 1), got {rate}")
        self.rate = rate
        self.scale_by_keep = scale_by_keep
        self.deterministic = False
        self.rngs = rngs["dropout"].fork() if rate > 0 else nnx.data(None)

    def mask(self, x: jax.Array) -> jax.Array | None:
        """The per-example factor (N, 1, …) this call multiplies ``x`` by; None at eval."""
        if self.deterministic or self.rate == 0.0:
            return None
        keep = 1.0 - self.rate
        r = jax.random.uniform(self.rngs(), (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
        mask = jnp.floor(keep + r)
        return mask / keep if self.scale_by_keep else mask

    def __call__(self, x: jax.Array) -> jax.Array:
        mask = self.mask(x)
        return x if mask is None else x * mask


def _same_pads(size: int, window: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def pool_pads(
    shape: tuple[int, ...], window: int, stride: int, padding: str
) -> list[tuple[int, int]]:
    """NHWC padding for a pool or conv: TF 'same' or PyTorch-style 'symmetric'."""
    if padding == "same":
        hw = [_same_pads(shape[i], window, stride) for i in (1, 2)]
    elif padding == "symmetric":
        p = ((stride - 1) + (window - 1)) // 2
        hw = [(p, p), (p, p)]
    else:
        raise ValueError(f"padding: unknown {padding!r}; valid: same, symmetric")
    return [(0, 0), *hw, (0, 0)]


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """2×2 stride-2 average pool, 'SAME', averaging over unpadded elements only."""
    pads = pool_pads(x.shape, 2, 2, "same")
    dims, strides = (1, 2, 2, 1), (1, 2, 2, 1)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, pads)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, dims, strides, pads)
    return total / count


def max_pool_3x3(x: jax.Array, padding: str) -> jax.Array:
    """3×3 stride-2 max pool (the ResNet stem), padded with -inf."""
    pads = pool_pads(x.shape, 3, 2, padding)
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), pads)


def _numpy_rng(key: jax.Array) -> np.random.Generator:
    data = np.asarray(jax.random.key_data(key), np.uint64).ravel()
    return np.random.default_rng(np.random.Philox(key=data[:2] if data.size >= 2 else data))


def normal_init(std: float | None = None, scale: float = 1.0, fan_axes: int = -1):
    """``N(0, std²)`` (or fan-in scaled ``N(0, scale/fan_in)``) initializer.

    With a concrete key it draws with numpy's Philox seeded from the key: building a model
    then costs no XLA compilation per parameter shape (each costs ~0.1 s on a 2-core CPU, so
    eager creation of even a nano model took ~8 s). Under tracing (``jax.jit``,
    ``nnx.eval_shape``) it falls back to ``jax.random.normal``. Deterministic for a given key.
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        fan_in = math.prod(shape[:fan_axes]) if fan_axes else 1
        s = std if std is not None else math.sqrt(scale / max(fan_in, 1))
        if isinstance(key, jax.core.Tracer):
            return jax.random.normal(key, shape, dtype) * s
        return jnp.asarray(_numpy_rng(key).standard_normal(shape, np.float32) * s, dtype)

    return init


def constant_init(value: float):
    """Constant initializer built on the host (no per-shape compilation)."""

    def init(key: jax.Array | None, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        del key
        return jnp.asarray(np.full(shape, value, np.float32), dtype)

    return init
