"""AGC: hand-computed cases, property tests against optax, exclusion and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from study import models
from study.engine.agc import adaptive_grad_clip, clipped_fraction, unitwise_axes


def apply(tx, grads, params):
    state = tx.init(params)
    # One compiled program per tree instead of one per eager op and shape.
    return jax.jit(tx.update)(grads, state, params)


def test_hand_computed_linear_kernel():
    # (in=2, out=2) kernel: unit 0 is column [3, 4] (‖W‖=5), unit 1 is column [0, 0] (→ eps).
    w = jnp.array([[3.0, 0.0], [4.0, 0.0]])
    g = jnp.array([[0.3, 1.0], [0.4, 0.0]])  # ‖G_0‖ = 0.5, ‖G_1‖ = 1
    out, state = apply(adaptive_grad_clip(0.01, exclude=None), {"w": g}, {"w": w})
    # unit 0: max 0.05 < 0.5 → scaled by 0.1; unit 1: max 0.01·1e-3 → scaled to norm 1e-5.
    np.testing.assert_allclose(out["w"][:, 0], [0.03, 0.04], rtol=1e-6)
    np.testing.assert_allclose(out["w"][:, 1], [1e-5, 0.0], rtol=1e-6)
    assert int(state.clipped) == 2 and int(state.units) == 2


def test_unclipped_below_threshold_and_strict_inequality():
    w = jnp.array([[3.0], [4.0]])  # ‖W‖ = 5, λ = 0.1 → max norm 0.5
    g_equal = jnp.array([[0.3], [0.4]])  # exactly 0.5: not clipped (strict >)
    out, state = apply(adaptive_grad_clip(0.1, exclude=None), {"w": g_equal}, {"w": w})
    np.testing.assert_array_equal(out["w"], g_equal)
    assert int(state.clipped) == 0
    g_small = g_equal * 0.5
    out, _ = apply(adaptive_grad_clip(0.1, exclude=None), {"w": g_small}, {"w": w})
    np.testing.assert_array_equal(out["w"], g_small)


def test_conv_kernel_is_clipped_per_output_channel():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32)
    out, _ = apply(adaptive_grad_clip(0.01, exclude=None), {"k": g}, {"k": w})
    w_norm = np.sqrt((np.asarray(w) ** 2).sum(axis=(0, 1, 2)))
    o_norm = np.sqrt((np.asarray(out["k"]) ** 2).sum(axis=(0, 1, 2)))
    np.testing.assert_allclose(o_norm, 0.01 * w_norm, rtol=1e-5)
    # Direction is kept.
    cos = (np.asarray(out["k"]) * np.asarray(g)).sum(axis=(0, 1, 2)) / (o_norm * np.sqrt((np.asarray(g) ** 2).sum(axis=(0, 1, 2))))
    np.testing.assert_allclose(cos, 1.0, rtol=1e-5)


def test_vectors_and_scalars_are_one_unit_and_zero_init_moves_by_eps():
    gain = jnp.zeros((8,))
    skip = jnp.zeros(())
    grads = {"gain": jnp.full((8,), 2.0), "skip": jnp.asarray(3.0)}
    out, state = apply(adaptive_grad_clip(0.01, exclude=None), grads, {"gain": gain, "skip": skip})
    # One norm over the whole vector: clipped to 0.01 · 1e-3 in total, not per element.
    np.testing.assert_allclose(np.linalg.norm(out["gain"]), 1e-5, rtol=1e-5)
    np.testing.assert_allclose(out["skip"], 1e-5, rtol=1e-5)
    assert int(state.units) == 2
    assert unitwise_axes((1, 1, 1, 7)) is None  # squeezed rank 1, as the official code


def test_layer_granularity_uses_whole_tensor_norm():
    w = jnp.array([[3.0, 0.0], [4.0, 0.0]])
    g = jnp.array([[0.3, 1.0], [0.4, 0.0]])
    out, state = apply(adaptive_grad_clip(0.01, granularity="layer", exclude=None), {"w": g}, {"w": w})
    total = float(np.linalg.norm(g))
    np.testing.assert_allclose(out["w"], np.asarray(g) * (0.05 / total), rtol=1e-6)
    assert int(state.units) == 1


def random_tree(draw_shapes, seed, zero_mask):
    rng = np.random.default_rng(seed)
    params, grads = {}, {}
    for i, shape in enumerate(draw_shapes):
        p = rng.normal(size=shape).astype(np.float32)
        if zero_mask[i]:
            p = np.zeros(shape, np.float32)
        params[f"p{i}"] = jnp.asarray(p)
        grads[f"p{i}"] = jnp.asarray(rng.normal(size=shape).astype(np.float32) * rng.choice([1e-4, 1.0, 100.0]))
    return params, grads


shapes = st.one_of(
    st.just(()),
    st.tuples(st.integers(1, 6)),
    st.tuples(st.integers(2, 5), st.integers(2, 5)),
    st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(2, 4), st.integers(2, 4)),
)


@settings(max_examples=40, deadline=None)
@given(
    tree_shapes=st.lists(shapes, min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
    clipping=st.sampled_from([0.01, 0.02, 0.04, 0.08, 0.16, 1.0]),
    zeros=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_agrees_with_optax_adaptive_grad_clip(tree_shapes, seed, clipping, zeros):
    params, grads = random_tree(tree_shapes, seed, zeros)
    ours, state = apply(adaptive_grad_clip(clipping, exclude=None), grads, params)
    theirs, _ = apply(optax.adaptive_grad_clip(clipping), grads, params)
    for k in params:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-12)
        # Property: after clipping, every unit satisfies ‖G_i‖ ≤ λ·max(‖W_i‖, eps).
        axes = unitwise_axes(params[k].shape)
        gn = np.sqrt((np.asarray(ours[k], np.float64) ** 2).sum(axis=axes))
        pn = np.maximum(np.sqrt((np.asarray(params[k], np.float64) ** 2).sum(axis=axes)), 1e-3)
        assert np.all(gn <= clipping * pn * (1 + 1e-5))
    assert 0.0 <= float(clipped_fraction(state)) <= 1.0


def nano_tree():
    m = models.create("nfnet-nano", rngs=nnx.Rngs(0))
    params = nnx.state(m, nnx.Param)
    grads = jax.tree.map(lambda p: np.full(p.shape, 10.0, np.float32), params)
    return params, grads


def test_classifier_weight_excluded_by_default_but_its_bias_is_clipped():
    params, grads = nano_tree()
    out, _ = apply(adaptive_grad_clip(0.01), grads, params)
    np.testing.assert_array_equal(out["head"]["kernel"][...], grads["head"]["kernel"][...])
    assert float(jnp.linalg.norm(out["head"]["bias"][...])) < float(jnp.linalg.norm(grads["head"]["bias"][...]))
    assert float(jnp.abs(out["stem"]["conv"]["kernel"][...]).max()) < 10.0


def test_exclude_patterns_and_predicate_for_layer_ablation():
    params, grads = nano_tree()
    tx = adaptive_grad_clip(0.01, exclude=["head/kernel", "stem/*", "stages/1/*"])
    out, _ = apply(tx, grads, params)
    np.testing.assert_array_equal(out["stem"]["conv"]["kernel"][...], 10.0)
    np.testing.assert_array_equal(out["stages"][1][0]["conv1"]["kernel"][...], 10.0)
    assert float(jnp.abs(out["stages"][0][0]["conv1"]["kernel"][...]).max()) < 10.0
    out, _ = apply(adaptive_grad_clip(0.01, exclude=lambda p: p.startswith("stages/0/")), grads, params)
    np.testing.assert_array_equal(out["stages"][0][0]["conv1"]["kernel"][...], 10.0)
    assert float(jnp.abs(out["head"]["kernel"][...]).max()) < 10.0  # predicate replaces the default


def test_works_inside_nnx_optimizer_chain():
    m = models.create("nf-resnet-nano", rngs=nnx.Rngs(0))
    tx = optax.chain(adaptive_grad_clip(0.01), optax.sgd(0.1, momentum=0.9, nesterov=True))
    opt = nnx.Optimizer(m, tx, wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(1), (8, 28, 28, 1))
    y = jnp.arange(8) % 10
    before = nnx.state(m, nnx.Param)["stem"]["conv"]["kernel"][...].copy()

    @nnx.jit
    def step(m, opt):
        loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()  # noqa: E731
        opt.update(m, nnx.grad(loss)(m))

    step(m, opt)
    after = nnx.state(m, nnx.Param)["stem"]["conv"]["kernel"][...]
    assert not np.allclose(before, after)
    assert int(opt.opt_state[0].units) > 0


@pytest.mark.parametrize("clipping", [0.0, -0.01, float("nan"), float("inf"), "0.01"])
def test_bad_clipping_raises(clipping):
    with pytest.raises(ValueError, match="clipping"):
        adaptive_grad_clip(clipping)


@pytest.mark.parametrize("exclude", [[""], ["stem/[conv"], [3]])
def test_bad_patterns_raise(exclude):
    with pytest.raises(ValueError, match="pattern"):
        adaptive_grad_clip(0.01, exclude=exclude)


def test_pattern_matching_nothing_raises_at_init():
    params, _ = nano_tree()
    with pytest.raises(ValueError, match="stagez"):
        adaptive_grad_clip(0.01, exclude=["stagez/*"]).init(params)


def test_bad_granularity_and_missing_params():
    with pytest.raises(ValueError, match="granularity"):
        adaptive_grad_clip(0.01, granularity="row")
    tx = adaptive_grad_clip(0.01)
    with pytest.raises(ValueError):
        tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}), None)
