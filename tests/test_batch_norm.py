"""study.models.batch_norm against flax's nnx.BatchNorm: the same function, a written-out gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from study.models.batch_norm import BatchNorm


def _pair(ch: int):
    ours = BatchNorm(ch, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
    ref = nnx.BatchNorm(ch, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    for m in (ours, ref):
        m.scale.value = jnp.asarray(rng.normal(size=ch) + 1, jnp.float32)
        m.bias.value = jnp.asarray(rng.normal(size=ch), jnp.float32)
        rng = np.random.default_rng(1)  # the same scale and bias for both
    return ours, ref


@pytest.mark.parametrize("shape", [(8, 5, 5, 6), (16, 1, 1, 3), (32, 4)])
def test_training_mode_output_gradients_and_running_stats_equal_flax(shape):
    ch = shape[-1]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape) * 3 + 2, jnp.float32)
    g = jnp.asarray(rng.normal(size=shape), jnp.float32)
    ours, ref = _pair(ch)

    def loss(m, x):
        return jnp.sum(m(x) * g)

    grads = {}
    for name, m in (("ours", ours), ("ref", ref)):
        gm, gx = nnx.grad(loss, argnums=(0, 1))(m, x)
        grads[name] = (gx, gm["scale"].value, gm["bias"].value)
    for a, b in zip(grads["ours"], grads["ref"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    # Three calls each (two under grad, one plain): the running averages moved alike.
    np.testing.assert_allclose(ours.mean.value, ref.mean.value, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours.var.value, ref.var.value, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(ours.mean.value))) > 0.1  # they did move


def test_eval_mode_uses_running_averages_and_dtype_is_kept():
    ours, ref = _pair(4)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(6, 3, 3, 4)), jnp.float32)
    ours(x), ref(x)
    ours.eval(), ref.eval()
    np.testing.assert_allclose(ours(x), ref(x), rtol=1e-6, atol=1e-6)
    assert ours(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    ours.train()
    assert ours(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_variance_is_exact_when_the_mean_dwarfs_the_spread():
    # The two-pass variance: flax's default E[x²] − E[x]² cancels in float32 here.
    m = BatchNorm(1, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
    x = (1e4 + jnp.arange(-2.0, 3.0)).reshape(5, 1)
    m(x)
    np.testing.assert_allclose(m.var.value, 0.9 * 1.0 + 0.1 * 2.0, rtol=1e-6)  # batch var 2
