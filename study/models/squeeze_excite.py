"""Squeeze-and-excite, as the NFNet blocks use it (App. C; `base.SqueezeExcite`).

mean-pool → Linear(C → int(ratio·C)) → act → Linear(→ C) → sigmoid; the block multiplies its
output by ``2·σ(·)`` (the factor 2 keeps the signal variance at init). The official code uses a
plain, un-γ'd ReLU inside although the paper writes GELU: ``activation`` makes that an ablation
knob, default ``"relu"``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from study.models.activations import activation as make_activation
from study.models.layers import Linear


class SqueezeExcite(nnx.Module):
    def __init__(
        self, channels: int, ratio: float, *, activation: str = "relu",
        gelu_approximate: bool = True, rngs: nnx.Rngs,
    ):
        hidden = max(1, int(channels * ratio))
        # Haiku's default Linear init, std 1/sqrt(fan_in) (the Linear default here).
        self.fc1 = Linear(channels, hidden, rngs=rngs)
        self.fc2 = Linear(hidden, channels, rngs=rngs)
        self.act = make_activation(activation, gelu_approximate=gelu_approximate, gamma=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Returns the sigmoid gate, shaped (N, 1, 1, C), in ``x``'s dtype: the float32 Linear
        parameters would otherwise promote a bfloat16 block output (and every block after it)."""
        h = jnp.mean(x, axis=(1, 2))
        h = self.fc2(self.act(self.fc1(h)))
        return jax.nn.sigmoid(h)[:, None, None, :].astype(x.dtype)
