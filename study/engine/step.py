"""The jitted training and evaluation steps, functional over a plain pytree state.

State: ``params`` (the nnx.Param values), ``rest`` (everything else in the model: dropout RNG
streams, BatchNorm statistics), ``opt`` (optax state), ``ema`` (EMA of the params) and ``step``,
all plain arrays in nested dicts; :class:`Graph` turns params and rest back into the module.
Gradient accumulation runs ``accum_steps`` micro-batches and averages their gradients
before AGC sees them, so 4×64 is the 256 batch's gradient exactly
(for models without batch statistics). Under a data-parallel mesh the batch axis is sharded
and XLA sums the gradients across devices before AGC, as the official code's ``psum``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from study.engine import trace_cache
from study.engine.agc import AGCState, clipped_fraction
from study.engine.optim import ema_update
from study.engine import tree_sum


@dataclasses.dataclass(frozen=True)
class Graph:
    """An nnx graphdef with the Variable structure of its params and rest.

    The train state holds plain arrays (nested dicts, as ``nnx.to_pure_dict``); the Variables
    are rebuilt only inside traces. Every jitted call flattens its arguments and unflattens its
    results, and with nnx Variables as pytree nodes that cost about 1.5 ms a call (cProfile of
    1,200 steps at batch 256: 302k Variable unflattens, 3.8 s).
    """

    graphdef: Any
    params_def: Any
    rest_def: Any

    def merge(self, params: Any, rest: Any) -> nnx.Module:
        """The module from plain ``params`` and ``rest`` (inside a trace: a fresh one per trace)."""
        return nnx.merge(self.graphdef, jax.tree.unflatten(self.params_def, jax.tree.leaves(params)),
                         jax.tree.unflatten(self.rest_def, jax.tree.leaves(rest)))


def split_model(model: nnx.Module) -> tuple[Graph, Graph, Any, Any]:
    """(train graph, eval graph, params, rest); params and rest as plain nested dicts of arrays."""
    model.train()
    g_train, params, rest = nnx.split(model, nnx.Param, ...)
    model.eval()
    g_eval, _, _ = nnx.split(model, nnx.Param, ...)
    model.train()
    defs = jax.tree.structure(params), jax.tree.structure(rest)
    return (Graph(g_train, *defs), Graph(g_eval, *defs),
            nnx.to_pure_dict(params), nnx.to_pure_dict(rest))


def _normalize(x: jax.Array, mean: tuple, std: tuple, dtype: Any) -> jax.Array:
    m = jnp.asarray(mean, jnp.float32) * 255.0
    s = jnp.asarray(std, jnp.float32) * 255.0
    return ((x.astype(jnp.float32) - m) / s).astype(dtype)


def _metrics(grads: Any, opt: Any, params: Any, loss: jax.Array, top1: jax.Array, lr: jax.Array) -> dict:
    """What one optimizer step logs (traced inside the jitted update)."""
    # Sums over all tensors as one reduction each (study.engine.tree_sum: XLA:CPU's compile time).
    nonfinite = tree_sum.nonneg_total([~jnp.isfinite(p) for p in jax.tree.leaves(params)], jnp.int32)
    grad_norm = jnp.sqrt(tree_sum.nonneg_total([jnp.square(g.astype(jnp.float32))
                                         for g in jax.tree.leaves(grads)], jnp.float32))
    agc = [s for s in jax.tree.leaves(opt, is_leaf=lambda s: isinstance(s, AGCState)) if isinstance(s, AGCState)]
    return {"loss": loss, "lr": lr, "grad_norm": grad_norm,
            "clip_fraction": clipped_fraction(agc[0]) if agc else jnp.zeros(()),
            "train_top1": top1, "params_finite": nonfinite == 0}


def make_train_step(
    graph: Graph, tx: optax.GradientTransformation, lr: optax.Schedule, *, num_classes: int,
    label_smoothing: float, ema_decay: float, mean: tuple, std: tuple, dtype: Any = jnp.float32,
    cache_key: str | None = None,
) -> Callable[[dict, dict], tuple[dict, dict]]:
    def loss_fn(params, rest, x, y, dist):
        # The Variables are built at this trace level: the dropout RNG counters are mutated
        # here, and NNX refuses to mutate Variables created at an enclosing jit/scan level.
        model = graph.merge(params, rest)
        logits = model(_normalize(x, mean, std, dtype)).astype(jnp.float32)
        # Smoothing after MixUp/CutMix label mixing, as the official `_loss_fn`.
        hard = jax.nn.one_hot(y, num_classes) if dist is None else dist
        targets = optax.smooth_labels(hard, label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        correct = jnp.sum(jnp.argmax(logits, -1) == y)
        return loss, (nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param))), correct)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    # With a cache key the traces are exported and reused by later runs (study.engine.trace_cache).
    jit = jax.jit if cache_key is None else functools.partial(trace_cache.cached_jit, key=cache_key)

    def micro(params, rest, gsum, lsum, csum, x, y, dist):
        (loss, (rest, correct)), g = grad_fn(params, rest, x, y, dist)
        if gsum is not None:
            g = jax.tree.map(jnp.add, gsum, g)
            loss, correct = lsum + loss, csum + correct
        return rest, g, loss, correct

    micro_step = jit(micro, **({} if cache_key is None else {"name": "micro_step"}))

    # accum is a constant of the trace: with one micro-batch the division (a pass over every
    # gradient) vanishes. The last micro-batch's gradient and the update are one call: a
    # dispatch fewer per step, and XLA fuses AGC and the optimizer into the backward pass's tail.
    @functools.cache
    def last_step_for(accum: int) -> Callable:
        def last_step(state, rest, gsum, lsum, csum, x, y, dist, examples):
            params = state["params"]
            # rest None: the state's own (passing it again would alias a donated buffer).
            rest = state["rest"] if rest is None else rest
            rest, gsum, lsum, csum = micro(params, rest, gsum, lsum, csum, x, y, dist)
            grads = gsum if accum == 1 else jax.tree.map(lambda g: g / accum, gsum)
            updates, opt = tx.update(grads, state["opt"], params)
            new_params = optax.apply_updates(params, updates)
            # EMA of the parameters; a BN model's EMA evaluation uses the running statistics,
            # which are themselves moving averages.
            ema = ema_update(state["ema"], new_params, ema_decay, state["step"])
            metrics = _metrics(grads, opt, new_params, lsum / accum, csum / examples, lr(state["step"]))
            new_state = dict(params=new_params, rest=rest, opt=opt, ema=ema, step=state["step"] + 1)
            return new_state, metrics

        if cache_key is None:
            return jax.jit(last_step, donate_argnums=0)
        return jit(last_step, name=f"last_step_accum{accum}", donate=0)

    def step(state: dict, batch: dict, sharding: Any = None) -> tuple[dict, dict]:
        """One optimizer step on ``batch`` (host arrays shaped (accum, micro, ...)).

        Micro-batches run one jitted gradient call each and their gradients are summed on the
        device, then averaged once: a Python loop rather than ``lax.scan``, because XLA:CPU runs
        convolutions inside a while loop about 8× slower (measured: 858 vs 108 ms per step).
        """
        accum = len(batch["image"])  # an array (accum, micro, ...) or a list of micro-batches
        # The host's batch is its 1/process_count share of the global one.
        examples = jnp.float32(jax.process_count() * sum(batch["label"][i].shape[0] for i in range(accum)))
        rest, gsum, lsum, csum = None, None, None, None
        for i in range(accum):
            x, y = batch["image"][i], batch["label"][i]
            dist = batch["label_dist"][i] if "label_dist" in batch else None
            if sharding is not None:
                x, y, dist = (put(v, sharding) for v in (x, y, dist))
            if i == accum - 1:
                return last_step_for(accum)(state, rest, gsum, lsum, csum, x, y, dist, examples)
            rest = state["rest"] if rest is None else rest
            rest, gsum, lsum, csum = micro_step(state["params"], rest, gsum, lsum, csum, x, y, dist)
        raise ValueError("a batch needs at least one micro-batch")

    return step


def put(x: Any, sharding: Any) -> Any:
    """Host array → device array; with several processes each passes its own share."""
    if x is None:
        return None
    if jax.process_count() > 1:
        return jax.make_array_from_process_local_data(sharding, x)
    return jax.device_put(x, sharding)


def make_eval_step(graph: Graph, *, mean: tuple, std: tuple, dtype: Any = jnp.float32) -> Callable:
    """(params, rest, x, y) → (top-1 correct, top-5 correct) for one batch."""

    def step(params, rest, x, y):
        model = graph.merge(params, rest)
        logits = model(_normalize(x, mean, std, dtype)).astype(jnp.float32)
        top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        return jnp.sum(top5[:, 0] == y), jnp.sum(jnp.any(top5 == y[:, None], axis=-1))

    return step
