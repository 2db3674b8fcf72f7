"""Adaptive Gradient Clipping (AGC) as an optax transform (NFNets §4, eq. 3).

For each unit i of a parameter W (an output unit: a column of an (in, out) Linear kernel, an
output channel of an HWIO conv kernel), with G the gradient:

    if ‖G_i‖_F / max(‖W_i‖_F, eps) > λ:   G_i ← λ · max(‖W_i‖_F, eps) / ‖G_i‖_F · G_i

Semantics are the official code's (deepmind-research/nfnets `optim.py:SGD_AGC`,
`agc_optax.py`; paper-recipe §2): unit-wise norms over axes (0, 1, 2) of rank-4 HWIO kernels,
axis 0 of rank-2/3 kernels, axes (0, 1, 2, 3) of rank-5, and one norm over the whole tensor when
its squeezed rank is ≤ 1 (biases, gains, scalar skip gains); eps = 1e-3 floors the parameter
norm so zero-initialised parameters can still move; a strict ``>``; and a separate 1e-6 guard on
the division. The classifier weight (``head/kernel``) is excluded by default, its bias is
clipped, as in the official code. ``granularity="layer"`` clips by whole-tensor norms, the
paper's layer-wise alternative.

Use it before weight decay and momentum (paper-recipe §2: clip → wd → momentum → lr)::

    optax.chain(adaptive_grad_clip(0.01), optax.add_decayed_weights(...), optax.sgd(...))
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from study.config import AGC_GRANULARITIES
from study.engine import tree_sum

DIVISION_GUARD = 1e-6
CLASSIFIER: tuple[str, ...] = ("head/kernel",)

Exclude = Sequence[str] | Callable[[str], bool] | None


class AGCState(NamedTuple):
    """How many units the last update clipped, out of how many clippable units."""

    clipped: jax.Array
    units: jax.Array


def path_str(path: tuple[Any, ...]) -> str:
    """'/'-joined key path of a pytree leaf, without NNX's trailing ``value``."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    while parts and parts[-1] in ("value", "raw_value"):
        parts.pop()
    return "/".join(parts)


def unitwise_axes(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Axes reduced for a per-unit norm; None means one norm over the whole tensor."""
    if sum(d != 1 for d in shape) <= 1:  # squeezed rank ≤ 1, as the official unitwise_norm
        return None
    if len(shape) in (2, 3):
        return (0,)
    if len(shape) == 4:
        return (0, 1, 2)
    if len(shape) == 5:
        return (0, 1, 2, 3)
    raise ValueError(f"agc: no unit-wise norm for a rank-{len(shape)} tensor of shape {shape}")


def _norm(x: jax.Array, axes: tuple[int, ...] | None) -> jax.Array:
    x = x.astype(jnp.float32)
    if axes is None:
        return jnp.sqrt(jnp.sum(x * x))
    return jnp.sqrt(jnp.sum(x * x, axis=axes, keepdims=True))


def _check_pattern(p: Any) -> str:
    if not isinstance(p, str) or not p.strip():
        raise ValueError(f"agc exclude: pattern must be a non-empty string, got {p!r}")
    if p.count("[") != p.count("]"):
        raise ValueError(f"agc exclude: unbalanced brackets in pattern {p!r}")
    try:
        re.compile(fnmatch.translate(p))
    except re.error as e:
        raise ValueError(f"agc exclude: bad pattern {p!r}: {e}") from None
    return p


def _excluder(exclude: Exclude) -> tuple[Callable[[str], bool], tuple[str, ...]]:
    if exclude is None:
        return (lambda _: False), ()
    if callable(exclude):
        return exclude, ()
    if isinstance(exclude, str):
        exclude = (exclude,)
    patterns = tuple(_check_pattern(p) for p in exclude)
    return (lambda path: any(fnmatch.fnmatchcase(path, p) for p in patterns)), patterns


def adaptive_grad_clip(
    clipping: float,
    eps: float = 1e-3,
    *,
    granularity: str = "unit",
    exclude: Exclude = CLASSIFIER,
) -> optax.GradientTransformation:
    """AGC with threshold λ = ``clipping``.

    Args:
      clipping: λ, the largest allowed ratio ‖G_i‖ / max(‖W_i‖, eps); must be a finite number > 0.
      eps: floor on the parameter norm (1e-3 in the paper and code).
      granularity: ``"unit"`` (per output unit, the paper's AGC) or ``"layer"`` (whole tensor).
      exclude: parameters left unclipped: glob patterns over '/'-joined parameter paths
        (``"head/kernel"``, ``"stem/*"``, ``"stages/1/*"``), or a predicate on the path, or
        None to clip everything. Each pattern given must match at least one parameter, so a
        typo in an ablation fails at ``init`` instead of silently clipping everything.
    """
    if not isinstance(clipping, (int, float)) or not math.isfinite(clipping) or clipping <= 0:
        raise ValueError(f"agc clipping: must be a finite number > 0, got {clipping!r}")
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"agc eps: must be a finite number > 0, got {eps!r}")
    if granularity not in AGC_GRANULARITIES:
        raise ValueError(f"agc granularity: unknown {granularity!r}; valid: {', '.join(AGC_GRANULARITIES)}")
    is_excluded, patterns = _excluder(exclude)
    strict = exclude is not CLASSIFIER  # the default may meet trees without a classifier

    def leaf_paths(params: Any) -> list[str]:
        return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]

    def init_fn(params: Any) -> AGCState:
        paths = leaf_paths(params)
        if strict:
            for p in patterns:
                if not any(fnmatch.fnmatchcase(path, p) for path in paths):
                    raise ValueError(f"agc exclude: pattern {p!r} matches no parameter")
        return AGCState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def update_fn(updates: Any, state: AGCState, params: Any = None) -> tuple[Any, AGCState]:
        del state
        if params is None:
            raise ValueError(optax._src.base.NO_PARAMS_MSG)
        flat_g, treedef = jax.tree_util.tree_flatten_with_path(updates)
        flat_p = jax.tree.leaves(params)
        if len(flat_p) != len(flat_g):
            raise ValueError("agc: updates and params have different structures")
        out, triggers, units = [], [], 0
        for (path, g), p in zip(flat_g, flat_p):
            if is_excluded(path_str(path)):
                out.append(g)
                continue
            axes = None if granularity == "layer" else unitwise_axes(p.shape)
            max_norm = clipping * jnp.maximum(_norm(p, axes), eps)
            g_norm = _norm(g, axes)
            trigger = g_norm > max_norm
            scale = jnp.where(trigger, max_norm / jnp.maximum(g_norm, DIVISION_GUARD), 1.0)
            out.append((g * scale).astype(g.dtype))
            triggers.append(trigger)
            units += trigger.size
        clipped = tree_sum.nonneg_total(triggers, jnp.int32)  # one reduction: study.engine.tree_sum
        new_state = AGCState(clipped, jnp.asarray(units, jnp.int32))
        return jax.tree_util.tree_unflatten(treedef, out), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def clipped_fraction(state: AGCState) -> jax.Array:
    """Fraction of units the last update clipped (0 when there were none)."""
    return state.clipped / jnp.maximum(state.units, 1)
