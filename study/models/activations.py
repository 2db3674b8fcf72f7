"""Activations with their variance-preserving gains γ (NFNets App. C).

The γ constants are the official table (deepmind-research/nfnets `base.nonlinearities`, also
timm `_nonlin_gamma`): γ·act(x) has unit second moment for x ~ N(0, 1).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

GAMMA: dict[str, float] = {
    "identity": 1.0,
    "celu": 1.270926833152771,
    "elu": 1.2716004848480225,
    "gelu": 1.7015043497085571,
    "glu": 1.8484294414520264,
    "leaky_relu": 1.70590341091156,
    "log_sigmoid": 1.9193484783172607,
    "log_softmax": 1.0002083778381348,
    "relu": 1.7139588594436646,
    "relu6": 1.7131484746932983,
    "selu": 1.0008515119552612,
    "sigmoid": 4.803835391998291,
    "silu": 1.7881293296813965,
    "soft_sign": 2.338853120803833,
    "softplus": 1.9203323125839233,
    "tanh": 1.5939117670059204,
}

_FN: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": lambda x: x,
    "celu": jax.nn.celu,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "log_sigmoid": jax.nn.log_sigmoid,
    "log_softmax": jax.nn.log_softmax,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "selu": jax.nn.selu,
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "soft_sign": jax.nn.soft_sign,
    "softplus": jax.nn.softplus,
    "tanh": jnp.tanh,
}

# glu halves the channel axis, so it cannot be a drop-in block activation.
NAMES: tuple[str, ...] = tuple(sorted(n for n in GAMMA if n != "glu"))


def activation(
    name: str, *, gelu_approximate: bool = True, gamma: bool = True
) -> Callable[[jax.Array], jax.Array]:
    """Returns ``x -> γ·act(x)`` (or the bare ``act`` when ``gamma=False``).

    ``gelu_approximate=True`` is DeepMind's ``jax.nn.gelu`` (tanh form); timm's weights were
    trained with the exact erf form, so weight parity with timm needs ``False``.
    """
    if name not in NAMES:
        raise ValueError(f"activation: unknown {name!r}; valid: {', '.join(NAMES)}")
    if name == "gelu":
        fn = lambda x: jax.nn.gelu(x, approximate=gelu_approximate)  # noqa: E731
    else:
        fn = _FN[name]
    if not gamma or GAMMA[name] == 1.0:
        return fn
    g = GAMMA[name]
    return lambda x: fn(x) * g
