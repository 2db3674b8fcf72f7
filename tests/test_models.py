"""Model zoo: Table 3 structure, registry API, NF ingredients, signal propagation, training."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from study import models
from study.analysis import published
from study.models.activations import GAMMA, activation, gelu_erf
from study.models.nfnet import block_betas, expected_variances
from study.models import ws_conv
from study.models.layers import pool_pads
from study.models.ws_conv import standardize
from study.models.signal_prop import signal_propagation

VARIANTS = [f"nfnet-f{i}" for i in range(7)]


def abstract(name, **kw):
    return nnx.eval_shape(lambda: models.create(name, rngs=nnx.Rngs(0), **kw))


@pytest.mark.parametrize("name", VARIANTS)
def test_params_and_flops_equal_table_3_to_printed_digits(name):
    paper = f"NFNet-F{name[-1]}" + ("+SAM" if name.endswith("6") else "")
    res = models.PRESETS[name].test_resolution
    params = models.count_params(abstract(name))
    macs = models.flops(name, res)
    assert round(params / 1e6, 1) == published.lookup(paper, "params_millions", "Table 3")
    assert round(macs / 1e9, 2) == published.lookup(paper, "flops_billions", "Table 3")


def test_exact_counts_match_timm_and_torchvision():
    # timm 1.0.31 meta-device counts (library-notes §1a) and torchvision's resnet50.
    assert models.count_params(abstract("nfnet-f0")) == 71_489_284
    assert models.count_params(abstract("resnet-50")) == 25_557_032
    # timm nf_resnet50 has no SkipInit scalars; DeepMind's has one per block (16).
    assert models.count_params(abstract("nf-resnet-50", convention="timm")) == 25_557_032
    assert models.count_params(abstract("nf-resnet-50")) == 25_557_032 + 16


def test_variant_table_1():
    for i, (drop, train, test) in enumerate(
        [(0.2, 192, 256), (0.3, 224, 320), (0.4, 256, 352), (0.4, 320, 416),
         (0.5, 384, 512), (0.5, 416, 544), (0.5, 448, 576)]
    ):
        p = models.PRESETS[f"nfnet-f{i}"]
        cfg = models.resolve(f"nfnet-f{i}")
        assert (cfg.dropout, p.train_resolution, p.test_resolution) == (drop, train, test)
        assert cfg.depths == tuple(d * (i + 1) for d in (1, 2, 6, 3))
        assert cfg.widths == (256, 512, 1536, 1536)


def test_registry_names_and_errors():
    names = models.names()
    for n in VARIANTS + ["nfnet-f7", "nf-resnet-26", "nf-resnet-50", "nf-resnet-101",
                         "nf-resnet-152", "nf-resnet-200", "resnet-50", "resnet-101",
                         "nfnet-nano", "nf-resnet-nano", "resnet-nano"]:
        assert n in names
    with pytest.raises(ValueError, match="nfnet-f0"):  # lists the valid choices
        models.create("nfnet-f9", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="^widht_mult: not a knob.*width_mult"):
        models.resolve("nfnet-f0", widht_mult=2)
    for bad, match in [
        (dict(activation="swish"), "activation"), (dict(depth_rule="fib"), "depth_rule"),
        (dict(depth_rule="resnet", depth=42), "depth"), (dict(width_pattern="x"), "width_pattern"),
        (dict(convention="jax"), "convention"), (dict(padding="valid"), "padding"),
        (dict(stochdepth_rate=1.5), "stochdepth_rate"), (dict(group_width=4096), "group_width"),
        (dict(width_mult=0), "width_mult"), (dict(depths=(1, 2, 3)), "depths"),
    ]:
        with pytest.raises(ValueError, match=match):
            models.count_params(abstract("nfnet-f0", **bad))


def test_depth_rules_and_width_patterns():
    assert models.resolve("nfnet-f0", depth=3).depths == (3, 6, 18, 9)
    assert models.resolve("nfnet-f0", depth_rule="resnet", depth=101).depths == (3, 4, 23, 3)
    assert models.resolve("nf-resnet-50", depth=152).depths == (3, 8, 36, 3)
    assert models.resolve("nf-resnet-nano", depth_rule="nfnet", depth=1).depths == (1, 2, 6, 3)
    assert models.resolve("nfnet-f0", width_pattern="resnet").widths == (256, 512, 1024, 2048)
    assert models.resolve("nfnet-f0", width_mult=0.5).widths == (128, 256, 768, 768)
    assert models.resolve("nfnet-f0", depths=[2, 2, 2, 2]).depths == (2, 2, 2, 2)
    cfg = models.resolve("nfnet-f0", convention="timm")
    assert (cfg.ws_eps, cfg.gelu_approximate, cfg.padding) == ("timm", False, "same")
    # Every knob changes what gets built.
    base = models.count_params(abstract("nfnet-f0"))
    for kw in [dict(se_ratio=0.0), dict(group_width=64), dict(extra_conv=False),
               dict(final_conv_mult=0.0), dict(width_mult=0.5, group_width=64), dict(depth=2)]:
        assert models.count_params(abstract("nfnet-f0", **kw)) != base, kw


def test_betas_follow_expected_variance_bookkeeping():
    # paper-recipe §5: β for F0 block by block.
    want = [1.0, 0.9806, 0.9806, 0.9623, 0.9806, 0.9623, 0.9449, 0.9285, 0.9129, 0.8980, 0.9806, 0.9623]
    np.testing.assert_allclose(block_betas((1, 2, 6, 3), 0.2), want, atol=1e-4)
    m = models.create("nfnet-f0", rngs=nnx.Rngs(0), width_mult=0.125, group_width=16)
    np.testing.assert_allclose([b.beta for b in m.blocks()], want, atol=1e-4)
    assert expected_variances((2, 1), 0.2) == pytest.approx([1.04, 1.08, 1.04])


def test_stochastic_depth_ramp_and_eval_identity():
    m = models.create("nfnet-f0", rngs=nnx.Rngs(0), width_mult=0.125, group_width=16)
    rates = [b.drop_path.rate for b in m.blocks()]
    np.testing.assert_allclose(rates, [0.25 * i / 12 for i in range(12)])
    x = jnp.ones((64, 4, 4, 8))
    sd = m.blocks()[-1].drop_path
    kept = sd(x)[:, 0, 0, 0]
    assert set(np.unique(np.asarray(kept))) <= {0.0, 1.0}  # no 1/keep rescaling
    assert 0 < float(kept.mean()) < 1
    m.eval()
    np.testing.assert_array_equal(sd(x), x)


def test_activation_gammas_preserve_unit_second_moment():
    z = jax.random.normal(jax.random.key(0), (2_000_000,))
    for name in ["relu", "gelu", "silu", "elu", "tanh", "softplus", "sigmoid"]:
        m2 = float(jnp.mean(activation(name)(z) ** 2))
        # γ is defined so that Var(γ·act(z)) = 1 for z ~ N(0, 1).
        v = float(jnp.var(activation(name)(z)))
        assert v == pytest.approx(1.0, abs=0.01), (name, v, m2)
    assert GAMMA["gelu"] == 1.7015043497085571
    with pytest.raises(ValueError, match="glu"):
        activation("glu")


def test_exact_gelu_is_the_erf_form_to_float32_rounding():
    # gelu_erf is PyTorch's formula; checked against float64 erfc (accurate in both tails),
    # value and derivative, and against jax.nn.gelu's own exact form. Absolute tolerance:
    # in the left tail 1 + erf cancels (relative error > 1e-3 below x = -3.8).
    x = np.linspace(-12, 12, 48_001, dtype=np.float32)
    x64 = x.astype(np.float64)
    ref = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x64])
    dref = np.array([0.5 * math.erfc(-v / math.sqrt(2)) + v * math.exp(-v * v / 2) / math.sqrt(2 * math.pi)
                     for v in x64])
    got = np.asarray(gelu_erf(jnp.asarray(x)), np.float64)
    dgot = np.asarray(jax.vmap(jax.grad(gelu_erf))(jnp.asarray(x)), np.float64)
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(dgot, dref, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(got, np.asarray(jax.nn.gelu(jnp.asarray(x), approximate=False)), atol=2e-6)
    assert activation("gelu", gelu_approximate=False, gamma=False) is gelu_erf


def test_weight_standardization_conventions():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(3, 3, 8, 4)), jnp.float32)
    gain = jnp.ones((4,))
    for style in ("deepmind", "timm"):
        ws = np.asarray(standardize(w, gain, style))
        np.testing.assert_allclose(ws.mean(axis=(0, 1, 2)), 0, atol=1e-6)
        np.testing.assert_allclose((ws**2).sum(axis=(0, 1, 2)), 1.0, rtol=1e-3)  # unit fan-in norm
    # var = 1e-6 with fan-in 576 (N·var > 1e-4): timm's eps on the variance shrinks the row
    # norm to ~0.3, DeepMind's floor on N·var does not bite (library-notes §1a).
    tiny = jnp.asarray(rng.normal(size=(3, 3, 64, 4)), jnp.float32) * 1e-3
    dm = np.asarray(standardize(tiny, gain, "deepmind"))
    tm = np.asarray(standardize(tiny, gain, "timm"))
    assert np.sqrt((dm**2).sum(axis=(0, 1, 2))).min() > 0.99
    assert np.sqrt((tm**2).sum(axis=(0, 1, 2))).max() < 0.35


@pytest.mark.parametrize("style", ["deepmind", "timm"])
def test_weight_standardization_gradients_equal_the_textbook_formula(style):
    # standardize's fan-in sums are dots with a hand-written transpose (ws_conv.fan_in_broadcast):
    # value and gradients must equal the plain mean/var formula's.
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.normal(size=(3, 3, 8, 5)), jnp.float32)
    gain = jnp.asarray(rng.normal(size=(5,)), jnp.float32)

    def textbook(w, gain):
        mean, var, n = w.mean((0, 1, 2), keepdims=True), w.var((0, 1, 2), keepdims=True), 72
        inv = (jax.lax.rsqrt(jnp.maximum(var * n, 1e-4)) if style == "deepmind"
               else jax.lax.rsqrt((var + 1e-5) * n))
        return (w - mean) * inv * gain * 1.7

    def loss(f):
        return lambda w, gain: jnp.sum(jnp.sin(3 * f(w, gain)))

    ours = lambda w, gain: standardize(w, gain, style, 1.7)
    np.testing.assert_allclose(ours(w, gain), textbook(w, gain), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.grad(loss(ours), (0, 1))(w, gain), jax.grad(loss(textbook), (0, 1))(w, gain)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("x_shape,k,stride,padding,groups,path", [
    ((4, 2, 2, 16), 3, 1, "same", 1, "patch"),        # 2×2 output, few images: patch matmul
    ((4, 4, 4, 16), 3, 2, "same", 1, "patch"),        # stride 2, asymmetric 'same' pads
    ((4, 3, 3, 8), 3, 2, "symmetric", 1, "patch"),    # PyTorch padding
    ((64, 4, 4, 8), 3, 2, "same", 1, "map"),          # many images: whole-map matmul
    ((64, 3, 3, 8), 3, 2, "symmetric", 1, "map"),
    ((64, 2, 2, 4), 3, 1, "same", 1, "map"),          # every output pixel reads padding
    ((64, 1, 1, 16), 3, 1, "same", 2, "map"),         # split groups, each a whole-map matmul
    ((2, 2, 2, 16), 3, 1, "same", 2, "patch"),        # split groups, each a patch matmul
    ((4, 6, 6, 12), 3, 1, "same", 3, "conv"),         # split groups, each an XLA conv
    ((4, 6, 6, 8), 3, 1, "same", 8, "conv"),          # depthwise-like: XLA's grouped conv
    ((4, 5, 5, 8), 1, 1, "same", 1, "pointwise"),     # 1×1: a matmul over the pixels
    ((4, 7, 7, 8), 1, 2, "same", 1, "pointwise"),     # strided, odd map: every other pixel
    ((4, 6, 6, 8), 1, 2, "symmetric", 1, "pointwise"),
])
def test_cpu_conv_rewrites_equal_xla_convolution(x_shape, k, stride, padding, groups, path, monkeypatch):
    # ws_conv rewrites slow XLA:CPU conv cases (1×1 as a pixel matmul, patch matmul, whole-map
    # matmul, per-group split): same numbers and same gradients as the plain grouped convolution.
    rng = np.random.default_rng(0)
    cin = x_shape[-1]
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, cin // groups, 2 * groups)), jnp.float32)
    taken = []
    for name in ("patch", "map", "pointwise"):
        f = getattr(ws_conv, f"_{name}_matmul")
        monkeypatch.setattr(ws_conv, f"_{name}_matmul",
                            lambda *a, f=f, name=name: taken.append(name) or f(*a))

    def ref(x, w):
        pads = pool_pads(x.shape, k, stride, padding)[1:3]
        return jax.lax.conv_general_dilated(x, w, (stride, stride), pads,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=groups)

    def ours(x, w):
        return ws_conv.conv2d(x, w, stride, padding, groups)

    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
    assert set(taken) == ({path} if path != "conv" else set())
    for f_ours, f_ref in zip(jax.grad(lambda x, w: jnp.sum(jnp.sin(ours(x, w))), (0, 1))(x, w),
                             jax.grad(lambda x, w: jnp.sum(jnp.sin(ref(x, w))), (0, 1))(x, w)):
        np.testing.assert_allclose(f_ours, f_ref, rtol=1e-4, atol=1e-4)


def test_signal_propagation_nf_resnet_50_follows_alpha_schedule():
    m = models.create("nf-resnet-50", rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 224, 224, 3))
    rows = signal_propagation(m, x)
    assert len(rows) == 16
    ratio = np.array([r["avg_var"] / r["expected_var"] for r in rows])
    assert np.all(np.abs(ratio - 1) < 0.10), ratio
    # Resets at transitions: the first block of each stage is back at 1 + α².
    for r in rows:
        if r["block"] in (0, 3, 7, 13):
            assert r["expected_var"] == pytest.approx(1.04)


def test_signal_propagation_nfnet_f0():
    x = jax.random.normal(jax.random.key(1), (4, 256, 256, 3))
    # With a strided-conv shortcut every NF ingredient (β, α, SE·2, two grouped convs, γ-GELU,
    # WS) holds the α² schedule on white-noise input.
    rows = signal_propagation(models.create("nfnet-f0", rngs=nnx.Rngs(0), shortcut="conv"), x)
    ratio = np.array([r["avg_var"] / r["expected_var"] for r in rows])
    assert np.all(np.abs(ratio - 1) < 0.10), ratio
    # The avg-pool shortcut (the real NFNet) averages 4 spatially independent values, so on
    # white noise each stride-2 transition loses most of the variance; natural images are
    # spatially correlated and do not. This documents the measured behaviour.
    rows = signal_propagation(models.create("nfnet-f0", rngs=nnx.Rngs(0)), x)
    stage_first = [r["avg_var"] for r in rows if r["block"] in (0, 1, 3, 9)]
    assert all(b < 0.35 * a for a, b in zip(stage_first, stage_first[1:])), stage_first


def test_batchnorm_resnet_train_and_eval_modes():
    m = models.create("resnet-nano", rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (8, 28, 28, 1)) * 3 + 1
    before = nnx.state(m, nnx.BatchStat)["stem_bn"]["mean"][...].copy()
    m.train()
    m(x)
    after = nnx.state(m, nnx.BatchStat)["stem_bn"]["mean"][...]
    assert not np.allclose(before, after)  # running statistics updated in train mode
    m.eval()
    y1, y2 = m(x), m(x[:1])
    np.testing.assert_allclose(y1[:1], y2, atol=1e-5)  # eval output is per-example
    np.testing.assert_array_equal(nnx.state(m, nnx.BatchStat)["stem_bn"]["mean"][...], after)


@pytest.mark.parametrize("name", ["nfnet-nano", "nf-resnet-nano", "resnet-nano"])
def test_nano_presets_lower_the_loss_on_a_fixed_batch(name):
    m = models.create(name, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(m, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(32, 28, 28, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, size=32))

    @nnx.jit
    def step(m, opt):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, grads)
        return loss

    losses = [float(step(m, opt)) for _ in range(20)]
    assert np.all(np.isfinite(losses))
    # Fitting 32 random labels: a real drop, not noise (nfnet-nano measured 2.31 → 1.89).
    assert losses[-1] < 0.85 * losses[0], losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_forward_shapes_and_flops_scale_with_resolution():
    m = models.create("nfnet-nano", rngs=nnx.Rngs(0))
    m.eval()
    assert m(jnp.zeros((2, 28, 28, 1))).shape == (2, 10)
    f28, f56 = models.flops("nfnet-nano", 28), models.flops("nfnet-nano", 56)
    assert 3.0 < f56 / f28 < 4.1  # conv MACs ×4, SE and classifier fixed


# The paper's "−NF, +BN" NFNet (Table 6): norm="batchnorm".
def _leaf_names(model, kind):
    from study.engine.agc import path_str

    return [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(nnx.state(model, kind))]


def test_batchnorm_nfnet_runs_in_train_and_eval_mode():
    m = models.create("nfnet-nano", rngs=nnx.Rngs(0), norm="batchnorm")
    params, stats = _leaf_names(m, nnx.Param), _leaf_names(m, nnx.BatchStat)
    assert stats and {p.rsplit("/", 1)[-1] for p in stats} == {"mean", "var"}
    assert not any("gain" in p for p in params)  # no WS gains, no SkipInit scalars
    # Every conv is bias-free and followed by a BatchNorm; BN leaves are no-decay names.
    convs = [p.rsplit("/", 1)[0] for p in params if p.endswith("/kernel") and "se/" not in p
             and p != "head/kernel"]
    assert convs and not any(f"{c}/bias" in params for c in convs)
    assert {p.rsplit("/", 1)[-1] for p in params} == {"kernel", "bias", "scale"}
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    m.train()
    before = nnx.state(m, nnx.BatchStat)["stem"]["bn"]["mean"][...].copy()
    assert m(x).shape == (4, 10)
    after = nnx.state(m, nnx.BatchStat)["stem"]["bn"]["mean"][...]
    assert not np.allclose(before, after)  # running statistics updated in train mode
    m.eval()
    y = m(x)
    assert y.shape == (4, 10) and np.all(np.isfinite(y))
    np.testing.assert_allclose(m(x[:1]), y[:1], atol=1e-5)  # eval: per-example
    # Same network otherwise: same MACs, and only the SkipInit scalars (one per block) differ.
    assert models.flops("nfnet-nano", 28, norm="batchnorm") == models.flops("nfnet-nano", 28)
    assert models.count_params(m) == models.count_params(abstract("nfnet-nano")) - 4
    assert all(b.beta == 1.0 and b.alpha == 1.0 for b in m.blocks())


def test_batchnorm_nfnet_blocks_start_as_identity():
    # depths (1, 2, 1, 1): stages/1/1 keeps its shape, so its shortcut is the identity.
    m = models.create("nfnet-nano", rngs=nnx.Rngs(0), norm="batchnorm", depths=(1, 2, 1, 1))
    m.train()
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    h = x
    h = m.stem_forward(h)
    for block in m.blocks()[:2]:
        h = block(h)
    block = m.stages[1][1]
    assert block.downsample is None and block.skip_gain is None
    np.testing.assert_array_equal(block(h), h)  # zero-init last BN scale: branch is exactly 0
    assert float(jnp.std(h)) > 0.1


def test_norm_knob_is_validated():
    with pytest.raises(ValueError, match="^norm: unknown 'bogus'; valid: nf, batchnorm"):
        models.resolve("nfnet-f0", norm="bogus")
    with pytest.raises(ValueError, match="norm"):
        models.create("nfnet-nano", rngs=nnx.Rngs(0), norm="bogus")
    assert "norm" in models.valid_overrides("nfnet-f0")
    assert "norm" not in models.valid_overrides("resnet-50")


def test_default_norm_leaves_parameter_counts_unchanged():
    # Counted before the norm knob existed.
    assert models.count_params(abstract("nfnet-nano")) == 347_566
    assert models.count_params(abstract("nfnet-f0")) == 71_489_284
    assert models.count_params(abstract("nfnet-f0", norm="nf")) == 71_489_284
    # BatchNorm: per-channel scale/bias replace WS gain/bias; the 12 SkipInit scalars go.
    assert models.count_params(abstract("nfnet-f0", norm="batchnorm")) == 71_489_284 - 12


@pytest.mark.parametrize("norm", ["nf", "batchnorm"])
def test_bfloat16_stays_bfloat16_through_every_block(norm):
    """The SE gate's float32 Linears once promoted every block after the first to float32, so a
    "bf16" step (the paper's protocol, bench-gpu) ran mostly in float32."""
    m = models.create("nfnet-nano", rngs=nnx.Rngs(0), norm=norm)
    m.eval()
    outs = []
    m.features(jnp.zeros((2, 28, 28, 1), jnp.bfloat16), collect=outs)
    assert [str(o.dtype) for o in outs] == ["bfloat16"] * 4
