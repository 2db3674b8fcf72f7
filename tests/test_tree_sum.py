"""Sums over every parameter tensor: the same value, and no fusion that grows with the tensor count."""

import re

import jax
import jax.numpy as jnp
import numpy as np

import study  # noqa: F401  (XLA:CPU flags as the trainer runs)
from study.engine import tree_sum


def _tensors(n):
    rng = np.random.default_rng(0)
    return [jnp.asarray(rng.standard_normal((3, 3, 4, 8 + i % 5)), jnp.float32) for i in range(n)]


def test_total_equals_the_sum_of_every_element():
    parts = [jnp.square(t) for t in _tensors(20)]
    expected = sum(float(np.sum(np.square(np.asarray(t), dtype=np.float64))) for t in _tensors(20))
    np.testing.assert_allclose(float(tree_sum.nonneg_total(parts, jnp.float32)), expected, rtol=1e-5)
    counts = [t > 1.0 for t in _tensors(20)]
    assert int(tree_sum.nonneg_total(counts, jnp.int32)) == sum(int(np.sum(np.asarray(t) > 1.0)) for t in _tensors(20))
    assert int(tree_sum.nonneg_total([], jnp.int32)) == 0


def _largest_fusion(fn, tensors) -> int:
    text = jax.jit(fn).lower(tensors).compile().as_text()
    blocks = re.split(r"\n(?=%fused_computation|ENTRY)", text)
    return max(len(b.splitlines()) for b in blocks if b.startswith("%fused_computation"))


def test_the_sum_does_not_build_one_fusion_over_all_tensors():
    tensors = _tensors(200)
    chain = _largest_fusion(lambda ts: sum(jnp.sum(jnp.square(t)) for t in ts), tensors)
    ours = _largest_fusion(lambda ts: tree_sum.nonneg_total([jnp.square(t) for t in ts], jnp.float32), tensors)
    assert chain > 200 > 4 * ours  # the chain's fusion holds every tensor's add; ours stays small
