"""The machine's f32 peak as JAX reaches it: one large matmul and one large 3×3 convolution.

MFU divides a train step's achieved FLOP/s by these, so they are timed in the same run, in
rounds interleaved with the steps they normalise (a peak measured in a quiet minute would
make a busy minute's step look inefficient). The conv shape is the fastest of those tried on
this machine (BENCHMARKS.md): batch 32, 28×28, 128 → 128 channels, NHWC, 'SAME'.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

MATMUL_N = 1024
CONV = (32, 28, 128, 128, 3)  # batch, spatial, in, out, kernel
MATMUL_FLOP = 2 * MATMUL_N**3
CONV_FLOP = 2 * CONV[0] * CONV[1] ** 2 * CONV[2] * CONV[3] * CONV[4] ** 2


class Peak:
    """Compiled peak kernels; :meth:`round` times each once and returns FLOP/s."""

    def __init__(self) -> None:
        k = jax.random.split(jax.random.key(0), 4)
        n = MATMUL_N
        b, s, ci, co, kk = CONV
        self.a = jax.random.normal(k[0], (n, n), jnp.float32)
        self.b = jax.random.normal(k[1], (n, n), jnp.float32)
        self.x = jax.random.normal(k[2], (b, s, s, ci), jnp.float32)
        self.w = jax.random.normal(k[3], (kk, kk, ci, co), jnp.float32)
        self.matmul = jax.jit(lambda a, b: a @ b)
        self.conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
        for _ in range(3):  # compile both; the first calls run well below peak (warm-up)
            self.round()

    def round(self) -> dict[str, float]:
        out = {}
        for name, fn, args, flop in (("matmul", self.matmul, (self.a, self.b), MATMUL_FLOP),
                                     ("conv", self.conv, (self.x, self.w), CONV_FLOP)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            out[name] = flop / (time.perf_counter() - t0)
        return out

    def median(self, rounds: int = 5) -> dict[str, float]:
        """Median FLOP/s over ``rounds`` rounds."""
        runs = [self.round() for _ in range(rounds)]
        return {k: statistics.median(r[k] for r in runs) for k in runs[0]}
