"""AGC's own cost: the optimiser's update alone on a model's parameter shapes, with and without AGC.

``python -m bench.agc_alone nfnet-f0 [--rounds 9]`` times, jitted and interleaved, on random
parameters and gradients of the model's shapes: AGC alone (``study.engine.agc``), a plain SGD
update (``p − lr·(g + wd·p)``), and the two chained. AGC's cost in a train step is the chained
time less SGD's. It is the measurement behind BENCHMARKS.md's AGC discussion (the bench's
with/without-AGC step difference on NFNet-F0 is this number); not part of `make bench`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def tensors(model: str) -> tuple[Any, Any, int]:
    """(params, grads, count): random arrays of the model's parameter shapes, grads 100× smaller."""
    from flax import nnx

    from study import models

    shapes = nnx.state(nnx.eval_shape(lambda: models.create(model, rngs=nnx.Rngs(0))), nnx.Param)
    leaves, tdef = jax.tree.flatten(shapes)
    key = jax.random.PRNGKey(0)
    ps = [jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32) for i, x in enumerate(leaves)]
    gs = [0.01 * jax.random.normal(jax.random.fold_in(key, len(leaves) + i), x.shape, jnp.float32)
          for i, x in enumerate(leaves)]
    return jax.tree.unflatten(tdef, ps), jax.tree.unflatten(tdef, gs), sum(int(np.prod(x.shape)) for x in leaves)


def updates(clipping: float = 0.01) -> dict[str, Callable]:
    from study.engine import agc

    clip = agc.adaptive_grad_clip(clipping)

    def agc_only(g, p):
        return clip.update(g, clip.init(p), p)[0]

    def sgd(g, p):
        return jax.tree.map(lambda gl, pl: pl - 0.1 * (gl + 5e-5 * pl), g, p)

    return {"agc": agc_only, "sgd": sgd, "agc+sgd": lambda g, p: sgd(agc_only(g, p), p)}


def measure(model: str, rounds: int) -> dict[str, float]:
    """Median ms per update of each variant, rounds interleaved."""
    params, grads, _ = tensors(model)
    jitted = {k: jax.jit(f) for k, f in updates().items()}
    for f in jitted.values():
        jax.block_until_ready(f(grads, params))
    times: dict[str, list[float]] = {k: [] for k in jitted}
    for _ in range(rounds):
        for k, f in jitted.items():
            t = time.perf_counter()
            jax.block_until_ready(f(grads, params))
            times[k].append(time.perf_counter() - t)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    n = tensors(args.model)[2]
    ms = measure(args.model, args.rounds)
    print(f"{args.model}: {n / 1e6:.1f} M parameters, median of {args.rounds} interleaved rounds")
    for k, v in ms.items():
        print(f"  {k:8s} {v:7.1f} ms")
    print(f"  AGC's cost beside SGD: {ms['agc+sgd'] - ms['sgd']:.1f} ms")


if __name__ == "__main__":
    main()
