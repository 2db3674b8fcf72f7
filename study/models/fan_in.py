"""Sums over a kernel's leading (fan-in) axes as dots, for weight standardisation.

XLA:CPU runs a reduction over the leading axes of a large kernel (keeping the output-channel
axis) as a slow column reduction: NF-ResNet-50's 1×1×1024×2048 kernel took 50 ms, as much as
the step's largest convolutions (BENCHMARKS.md). The same sum as a vector-matrix product runs in
the matmul library. Autodiff's transpose of a broadcast is that slow reduction again, so
:func:`fan_in_broadcast` gives the broadcast a dot as its transpose. (AGC's unit-wise norms
stay ``jnp.sum``: there the squared tensor would have to be written out for the dot, and the
optimizer step measured 15-20% slower.)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def fan_in_sum(x: jax.Array, axes: int | None = None) -> jax.Array:
    """Sum over the first ``axes`` axes (default: all but the last), keeping dims."""
    k = x.ndim - 1 if axes is None else axes
    n, m = math.prod(x.shape[:k]), math.prod(x.shape[k:])
    s = jnp.ones((n,), x.dtype) @ x.reshape(n, m)
    return s.reshape((1,) * k + x.shape[k:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def fan_in_broadcast(v: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``v`` (1, …, 1, O) broadcast to a kernel's ``shape``; transposed by :func:`fan_in_sum`."""
    return jnp.broadcast_to(v, shape)


fan_in_broadcast.defvjp(lambda v, shape: (jnp.broadcast_to(v, shape), None),
                        lambda shape, _, g: (fan_in_sum(g),))
