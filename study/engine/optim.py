"""The paper's optimiser (NFNets §6.1, App. A.1; paper-recipe §1–3) as one optax chain.

    AGC (λ, eps; classifier weight excluded)            study.agc
    → + weight_decay · w  (L2 in the gradient, not on gains, biases, skip gains)
    → SGD, Nesterov momentum 0.9 (PyTorch-style, dampening 0, as `optim.py:SGD`)
    → × −lr(t), lr: linear warmup from 0, then cosine to 0 (`WarmupCosineDecay`)

peak lr = base_lr · batch / 256 (Goyal et al.). The official warmup is a float number of steps
(5 epochs = 1563.9 at batch 4096); optax counts whole steps, so it is rounded.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from study.engine.agc import adaptive_grad_clip, path_str

NO_DECAY = ("gain", "bias", "skip_gain", "scale")  # WS gains/biases, SkipInit, BatchNorm affine


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: conv kernels, SE and classifier weights."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: path_str(p).rsplit("/", 1)[-1] not in NO_DECAY, params
    )


def schedule(cfg: dict[str, Any], steps_per_epoch: float, total_steps: int) -> optax.Schedule:
    peak = cfg["base_lr"] * cfg["batch_size"] / 256
    warmup = min(int(round(cfg["warmup_epochs"] * steps_per_epoch)), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=max(total_steps, 1),
        end_value=0.0,
    )


def optimizer(cfg: dict[str, Any], lr: optax.Schedule) -> optax.GradientTransformation:
    parts = []
    if cfg["agc"]:
        parts.append(adaptive_grad_clip(
            cfg["agc_clipping"], cfg["agc_eps"], granularity=cfg["agc_granularity"],
            exclude=cfg["agc_exclude"] or None,
        ))
    if cfg["weight_decay"]:
        parts.append(optax.add_decayed_weights(cfg["weight_decay"], mask=decay_mask))
    parts.append(optax.sgd(lr, momentum=cfg["momentum"] or None, nesterov=cfg["nesterov"]))
    return optax.chain(*parts)


def ema_update(ema: Any, params: Any, decay: float, step: jax.Array) -> Any:
    """TF1-style EMA with warmup: d_t = min(decay, (1 + t) / (10 + t)) (`utils.tf1_ema`)."""
    t = step.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    return jax.tree.map(lambda e, p: e * d + p * (1.0 - d), ema, params)
