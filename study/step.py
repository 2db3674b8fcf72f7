"""The jitted training and evaluation steps, functional over a plain pytree state.

State: ``params`` (nnx.Param), ``rest`` (everything else in the model: dropout RNG streams,
BatchNorm statistics), ``opt`` (optax state), ``ema`` (EMA of the params) and ``step``. Gradient accumulation scans over ``accum_steps`` micro-batches and
averages their gradients before AGC sees them, so 4×64 is the 256 batch's gradient exactly
(for models without batch statistics). Under a data-parallel mesh the batch axis is sharded
and XLA sums the gradients across devices before AGC, as the official code's ``psum``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from study.agc import AGCState, clipped_fraction
from study.optim import ema_update


def split_model(model: nnx.Module) -> tuple[Any, Any, Any, Any]:
    """(train graphdef, eval graphdef, params, rest)."""
    model.train()
    g_train, params, rest = nnx.split(model, nnx.Param, ...)
    model.eval()
    g_eval, _, _ = nnx.split(model, nnx.Param, ...)
    model.train()
    return g_train, g_eval, params, rest


def _normalize(x: jax.Array, mean: tuple, std: tuple, dtype: Any) -> jax.Array:
    m = jnp.asarray(mean, jnp.float32) * 255.0
    s = jnp.asarray(std, jnp.float32) * 255.0
    return ((x.astype(jnp.float32) - m) / s).astype(dtype)


def make_train_step(
    graphdef: Any, tx: optax.GradientTransformation, lr: optax.Schedule, *, num_classes: int,
    label_smoothing: float, ema_decay: float, mean: tuple, std: tuple, dtype: Any = jnp.float32,
) -> Callable[[dict, dict], tuple[dict, dict]]:
    def loss_fn(params, rest, x, y):
        # Rebuild the Variables at this trace level: the dropout RNG counters are mutated here,
        # and NNX refuses to mutate Variables created at the enclosing jit/scan level.
        rest = jax.tree.map(lambda v: v, rest)
        model = nnx.merge(graphdef, params, rest)
        logits = model(_normalize(x, mean, std, dtype)).astype(jnp.float32)
        targets = optax.smooth_labels(jax.nn.one_hot(y, num_classes), label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        correct = jnp.sum(jnp.argmax(logits, -1) == y)
        return loss, (nnx.state(model, nnx.Not(nnx.Param)), correct)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: dict, batch: dict) -> tuple[dict, dict]:
        params = state["params"]
        accum = batch["image"].shape[0]

        def micro(carry, mb):
            rest, gsum, lsum, csum = carry
            (loss, (rest, correct)), g = grad_fn(params, rest, mb["image"], mb["label"])
            return (rest, jax.tree.map(jnp.add, gsum, g), lsum + loss, csum + correct), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        init = (state["rest"], zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        (rest, gsum, lsum, csum), _ = jax.lax.scan(micro, init, batch)
        grads = jax.tree.map(lambda g: g / accum, gsum)
        updates, opt = tx.update(grads, state["opt"], params)
        new_params = optax.apply_updates(params, updates)
        # EMA of the parameters; a BN model's EMA evaluation uses the running statistics,
        # which are themselves moving averages.
        ema = ema_update(state["ema"], new_params, ema_decay, state["step"])
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(new_params)]))
        agc = [s for s in jax.tree.leaves(opt, is_leaf=lambda s: isinstance(s, AGCState))
               if isinstance(s, AGCState)]
        metrics = {
            "loss": lsum / accum,
            "lr": lr(state["step"]),
            "grad_norm": optax.global_norm(grads),
            "clip_fraction": clipped_fraction(agc[0]) if agc else jnp.zeros(()),
            "train_top1": csum / (accum * batch["label"].shape[1]),
            "params_finite": finite,
        }
        new_state = dict(params=new_params, rest=rest, opt=opt, ema=ema, step=state["step"] + 1)
        return new_state, metrics

    return step


def make_eval_step(graphdef: Any, *, mean: tuple, std: tuple, dtype: Any = jnp.float32) -> Callable:
    """(params, rest, x, y) → (top-1 correct, top-5 correct) for one batch."""

    def step(params, rest, x, y):
        model = nnx.merge(graphdef, params, rest)
        logits = model(_normalize(x, mean, std, dtype)).astype(jnp.float32)
        top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        return jnp.sum(top5[:, 0] == y), jnp.sum(jnp.any(top5 == y[:, None], axis=-1))

    return step
