"""BatchNorm (Ioffe & Szegedy, 2015) with its training-mode gradient written out.

Same parameters, statistics and running-average update as ``nnx.BatchNorm`` (so checkpoints
and timm weight conversion are unchanged); only the training-mode forward and backward differ.
Autodiff of the textbook formula, on XLA:CPU, materialises every per-channel statistic and its
cotangent broadcast to the activation's full shape. The closed-form backward
(∂x = γ·σ⁻¹·(g − mean(g) − x̂·mean(g·x̂))) reads the activation and its cotangent once each for
two per-channel sums, then writes ∂x in one elementwise pass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def _stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    # Two-pass (centred) variance: no cancellation when |mean| ≫ std.
    var = jnp.mean(jnp.square(x - mean), axes)
    return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(normalised x, batch mean, biased batch variance) over all but the last (channel) axis."""
    mean, var = _stats(x)
    inv = jax.lax.rsqrt(var + eps)
    return (x - mean) * (inv * scale) + bias, mean, var


def _fwd(x, scale, bias, eps):
    mean, var = _stats(x)
    inv = jax.lax.rsqrt(var + eps)
    return ((x - mean) * (inv * scale) + bias, mean, var), (x, mean, inv, scale)


def _bwd(eps, res, cts):
    # The statistics leave only through stop_gradient (the running averages): their
    # cotangents are zero and ignored.
    x, mean, inv, scale = res
    g = cts[0]
    axes = tuple(range(x.ndim - 1))
    xhat = (x - mean) * inv
    dbias = jnp.sum(g, axes)
    dscale = jnp.sum(g * xhat, axes)
    n = x.size // x.shape[-1]
    dx = (scale * inv) * (g - dbias / n - xhat * (dscale / n))
    return dx, dscale, dbias


batch_norm_train.defvjp(_fwd, _bwd)


class BatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` over the channel (last) axis whose training mode runs
    :func:`batch_norm_train`; returns the input's dtype (``nnx.BatchNorm`` promotes a bfloat16
    input to its float32 parameters' dtype, which would run the rest of a bfloat16 network in
    float32). Statistics are reduced in float32."""

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, **kw) -> jax.Array:
        running = self.use_running_average if use_running_average is None else use_running_average
        if running or kw or self.axis_name is not None or self.scale is None or self.bias is None:
            return super().__call__(x, use_running_average, **kw).astype(x.dtype)
        y, mean, var = batch_norm_train(x.astype(jnp.float32), self.scale[...], self.bias[...],
                                        self.epsilon)
        m = self.momentum
        self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
        self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * var)
        return y.astype(x.dtype)
