"""Weight converters (study/models/convert.py): timm parity on real-timm fixtures, DeepMind Haiku naming
checked against an independent numpy forward pass, and the all-or-nothing error behaviour."""

from __future__ import annotations

import functools
import json
import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from study.models.convert import from_haiku, from_timm, load_haiku_file
from study.models import create

FIXTURES = Path(__file__).parent / "fixtures"
ATOL = 1e-4


# ------------------------------------------------------------------------------------ helpers


@functools.cache
def _fixture(name: str) -> tuple[dict[str, np.ndarray], dict, dict[str, np.ndarray]]:
    """(state_dict, meta, arrays) of tests/fixtures/timm_<name>.npz."""
    with np.load(FIXTURES / f"timm_{name}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    sd = {k[len("sd/"):]: v for k, v in arrays.items() if k.startswith("sd/")}
    return sd, json.loads(str(arrays["meta"])), arrays


def _build(meta: dict, convention: str = "timm", **extra) -> nnx.Module:
    """Our model reproducing the fixture's timm NfCfg (read from its meta, not hard-coded)."""
    c = meta["nfcfg"]
    assert c["width_factor"] == 1.0 and not c["reg"]  # knobs we do not map
    stem = {"deep_quad": "deep_quad", "7x7_pool": "resnet"}[c["stem_type"]]
    kw = dict(
        convention=convention, in_channels=meta["in_chans"], depths=tuple(c["depths"]),
        widths=tuple(c["channels"]), stem_width=c["stem_chs"], group_width=c["group_size"],
        bottleneck_ratio=c["bottle_ratio"], extra_conv=c["extra_conv"], alpha=c["alpha"],
        se_ratio=c["attn_kwargs"]["rd_ratio"] if c["attn_layer"] == "se" else 0.0,
        attn_gain=c["attn_gain"], activation=c["act_layer"],
        final_conv_mult=c["num_features"] / c["channels"][-1] if c["num_features"] else 0.0,
        dropout=meta["drop_rate"], stochdepth_rate=meta["drop_path_rate"],
    )
    kw.update(extra)
    name = "nfnet-f0" if stem == "deep_quad" else "nf-resnet-50"
    model = create(name, rngs=nnx.Rngs(0), num_classes=meta["num_classes"], **kw)
    if convention == "timm":  # the switch must reproduce timm's numerics flags
        cfg = model.cfg
        assert cfg.stem == stem and cfg.ws_eps == "timm" and c["std_conv_eps"] == 1e-5
        assert cfg.gamma_in == ("act" if c["gamma_in_act"] else "conv")
        assert cfg.skipinit == c["skipinit"]
        if "padding" not in extra:
            assert cfg.padding == ("same" if c["same_padding"] else "symmetric")
    model.eval()
    return model


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x):  # one compile per model/shape beats eager op-by-op dispatch
    return nnx.merge(graphdef, state)(x)


def _forward(model: nnx.Module, nhwc: np.ndarray) -> np.ndarray:
    graphdef, state = nnx.split(model)
    return np.asarray(_apply(graphdef, state, jnp.asarray(nhwc)))


def _logits(model: nnx.Module, nchw: np.ndarray) -> np.ndarray:
    return _forward(model, nchw.transpose(0, 2, 3, 1))


def _snapshot(model: nnx.Module) -> dict:
    leaves = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {path: np.array(v[...]) for path, v in leaves}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))


# --------------------------------------------------------------------------------- timm parity


@pytest.fixture(scope="module")
def timm_models() -> dict[str, nnx.Module]:
    out = {}
    for name in ("dm_tiny", "nfres_tiny"):
        sd, meta, _ = _fixture(name)
        out[name] = _build(meta)
        from_timm(sd, out[name])
    return out


@pytest.mark.parametrize("name", ["dm_tiny", "nfres_tiny"])
@pytest.mark.parametrize("inp", ["input", "input_asym"])
def test_timm_parity(timm_models, name, inp):
    _, _, arrays = _fixture(name)
    want = arrays["logits" if inp == "input" else "logits_asym"]
    got = _logits(timm_models[name], arrays[inp])
    diff = float(np.abs(got - want).max())
    print(f"{name}/{inp}: max |Δlogits| = {diff:.2e}")
    assert diff < ATOL, diff


def test_negative_control_deepmind_convention():
    """The same weights under DeepMind numerics (WS eps, tanh GELU) miss timm's logits."""
    sd, meta, arrays = _fixture("dm_tiny")
    model = _build(meta, convention="deepmind")
    with pytest.warns(UserWarning, match="convention='timm'"):
        from_timm(sd, model)
    for inp, out in (("input", "logits"), ("input_asym", "logits_asym")):
        assert np.abs(_logits(model, arrays[inp]) - arrays[out]).max() > 3 * ATOL


def test_negative_control_padding_needs_asymmetric_input():
    """Symmetric padding passes on the odd 33×33 input but fails on the asymmetric one."""
    sd, meta, arrays = _fixture("dm_tiny")
    model = _build(meta, padding="symmetric")
    from_timm(sd, model)
    assert np.abs(_logits(model, arrays["input"]) - arrays["logits"]).max() < ATOL
    assert np.abs(_logits(model, arrays["input_asym"]) - arrays["logits_asym"]).max() > 10 * ATOL


# --------------------------------------------------------------------------------------- errors


def _broken(kind: str) -> tuple[dict, str]:
    sd = dict(_fixture("dm_tiny")[0])
    if kind == "missing":
        key = "stages.1.1.conv2b.gain"
        del sd[key]
    elif kind == "extra":
        key = "stages.1.1.attn.fc1.weight"
        sd[key] = np.zeros((4, 4, 1, 1), np.float32)
    else:
        key = "stages.2.0.conv2.weight"
        sd[key] = np.zeros((48, 48, 3, 3), np.float32)  # ungrouped; should be (48, 16, 3, 3)
    return sd, key


@pytest.mark.parametrize("kind", ["missing", "extra", "shape"])
def test_timm_errors_name_key_and_leave_model_unchanged(kind):
    sd, key = _broken(kind)
    model = _build(_fixture("dm_tiny")[1])
    before = _snapshot(model)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as err:
        from_timm(sd, model)
    msg = str(err.value)
    assert "\n" not in msg
    if kind == "shape":
        assert "(48, 48, 3, 3)" in msg and "(48, 16, 3, 3)" in msg
    _assert_same(before, _snapshot(model))


# ------------------------------------------------------------------- DeepMind Haiku: numpy forward

GAMMA_GELU = 1.7015043497085571
TINY = dict(depths=(1, 2, 1, 1), widths=(32, 64, 96, 128), group_width=16, num_classes=10)
# DeepMind hard-codes stem channels 16, 32, 64, then width_pattern[0] // 2 (128 for every F-model);
# ours are stem_width/8, /4, /2, stem_width (timm's rule), equal at 128, so use 128 here.
STEM = 128


def _haiku_params(
    rng: np.random.Generator, depths, widths, group_width, num_classes, stem_ch: int = STEM
) -> dict:
    """Random params named and shaped as deepmind-research/nfnets nfnet.py builds them."""
    P: dict[str, dict[str, np.ndarray]] = {}
    f32 = lambda *a: np.asarray(a[0](*a[1:]), np.float32)  # noqa: E731

    def conv(name, k, cin, cout, groups=1):
        P[f"NFNet/~/{name}"] = dict(w=f32(rng.normal, 0, 1, (k, k, cin // groups, cout)),
                                   gain=f32(rng.uniform, 0.5, 1.5, cout),
                                   bias=f32(rng.normal, 0, 0.1, cout))

    def linear(name, cin, cout, std):
        P[f"NFNet/~/{name}"] = dict(w=f32(rng.normal, 0, std, (cin, cout)),
                                   b=f32(rng.normal, 0, 0.1, cout))

    ch = stem_ch
    for i, (cin, cout) in enumerate(zip((3, 16, 32, 64), (16, 32, 64, ch))):
        conv(f"stem_conv{i}", 3, cin, cout)
    idx = 0
    for s, (width, depth) in enumerate(zip(widths, depths)):
        for b in range(depth):
            blk = "nf_block" + (f"_{idx}" if idx else "")
            mid = int(width * 0.5) // group_width * group_width
            g = mid // group_width
            conv(f"{blk}/~/conv0", 1, ch, mid)
            conv(f"{blk}/~/conv1", 3, mid, mid, g)
            conv(f"{blk}/~/conv1b", 3, mid, mid, g)
            conv(f"{blk}/~/conv2", 1, mid, width)
            if (s > 0 and b == 0) or ch != width:
                conv(f"{blk}/~/conv_shortcut", 1, ch, width)
            linear(f"{blk}/~/squeeze_excite/~/linear", width, width // 2, 0.2)
            linear(f"{blk}/~/squeeze_excite/~/linear_1", width // 2, width, 0.2)
            P[f"NFNet/~/{blk}"] = dict(skip_gain=f32(rng.uniform, 0.5, 1.5, ()))
            ch, idx = width, idx + 1
    conv("final_conv", 1, ch, 2 * ch)
    linear("linear", 2 * ch, num_classes, 0.1)
    return P


def _np_conv(x, p, stride=1):
    """Haiku WSConv2D: rsqrt(max(N·var, 1e-4)) standardisation, TF-SAME padding, groups."""
    w = p["w"].astype(np.float64)
    kh, kw, cin_g, cout = w.shape
    w = (w - w.mean((0, 1, 2))) / np.sqrt(np.maximum(kh * kw * cin_g * w.var((0, 1, 2)), 1e-4))
    w = w * p["gain"]
    n, H, W, cin = x.shape
    Ho, Wo = -(-H // stride), -(-W // stride)
    ph, pw = max((Ho - 1) * stride + kh - H, 0), max((Wo - 1) * stride + kw - W, 0)
    x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    groups, cout_g = cin // cin_g, cout // (cin // cin_g)
    out = np.zeros((n, Ho, Wo, cout))
    for g in range(groups):
        xs, os_ = slice(g * cin_g, (g + 1) * cin_g), slice(g * cout_g, (g + 1) * cout_g)
        for i in range(kh):
            for j in range(kw):
                patch = x[:, i:i + stride * (Ho - 1) + 1:stride, j:j + stride * (Wo - 1) + 1:stride]
                out[..., os_] += patch[..., xs] @ w[i, j][:, os_]
    return out + p["bias"]


def _np_avg_pool(x):
    """hk.avg_pool 2×2/2 'SAME': pads after only, averages the valid elements."""
    n, H, W, c = x.shape
    Ho, Wo = -(-H // 2), -(-W // 2)
    pad = ((0, 0), (0, 2 * Ho - H), (0, 2 * Wo - W), (0, 0))
    total = np.pad(x, pad).reshape(n, Ho, 2, Wo, 2, c).sum((2, 4))
    count = np.pad(np.ones((1, H, W, 1)), pad).reshape(1, Ho, 2, Wo, 2, 1).sum((2, 4))
    return total / count


def _np_gelu(x):  # jax.nn.gelu's default tanh form, times the official γ
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))) * GAMMA_GELU


def _np_nfnet(P: dict, x: np.ndarray, depths, alpha: float = 0.2) -> np.ndarray:
    """NFNet.__call__ of deepmind-research/nfnets, on the Haiku-named dict, in float64."""
    m = lambda name: P[f"NFNet/~/{name}"]  # noqa: E731
    h = _np_gelu(_np_conv(x.astype(np.float64), m("stem_conv0"), 2))
    h = _np_gelu(_np_conv(h, m("stem_conv1")))
    h = _np_gelu(_np_conv(h, m("stem_conv2")))
    h = _np_conv(h, m("stem_conv3"), 2)
    idx, expected_std = 0, 1.0
    for s, depth in enumerate(depths):
        for b in range(depth):
            blk = "nf_block" + (f"_{idx}" if idx else "")
            sub = lambda name: m(f"{blk}/~/{name}")  # noqa: E731
            stride = 2 if (s > 0 and b == 0) else 1
            out = _np_gelu(h) * (1.0 / expected_std)
            has_proj = f"NFNet/~/{blk}/~/conv_shortcut" in P
            shortcut = _np_avg_pool(out) if stride > 1 else out
            shortcut = _np_conv(shortcut, sub("conv_shortcut")) if has_proj else h
            out = _np_conv(out, sub("conv0"))
            out = _np_conv(_np_gelu(out), sub("conv1"), stride)
            out = _np_conv(_np_gelu(out), sub("conv1b"))
            out = _np_conv(_np_gelu(out), sub("conv2"))
            l0, l1 = sub("squeeze_excite/~/linear"), sub("squeeze_excite/~/linear_1")
            z = np.maximum(out.mean((1, 2)) @ l0["w"] + l0["b"], 0) @ l1["w"] + l1["b"]
            out = 2 / (1 + np.exp(-z))[:, None, None, :] * out
            out = out * m(blk)["skip_gain"]
            h = out * alpha + shortcut
            idx += 1
            expected_std = 1.0 if b == 0 else expected_std
            expected_std = (expected_std**2 + alpha**2) ** 0.5
    h = _np_gelu(_np_conv(h, m("final_conv")))
    return h.mean((1, 2)) @ m("linear")["w"] + m("linear")["b"]


def _flatten_haiku_tree(tree: dict) -> dict:  # as deepmind-research/nfnets utils.py
    return {f"{mod.replace('/~/', '.').replace('/', '.')}.{k}": v
            for mod, ps in tree.items() for k, v in ps.items()}


@pytest.fixture(scope="module")
def haiku_case():
    rng = np.random.default_rng(0)
    params = _haiku_params(rng, **TINY)
    x = rng.normal(size=(2, 20, 20, 3)).astype(np.float32)
    return params, x, _np_nfnet(params, x, TINY["depths"])


def _tiny_nfnet(**kw) -> nnx.Module:
    model = create("nfnet-f0", rngs=nnx.Rngs(1), stem_width=STEM, dropout=0.0,
                   stochdepth_rate=0.0, **TINY, **kw)
    model.eval()
    return model


def test_haiku_matches_independent_numpy_forward(haiku_case):
    params, x, want = haiku_case
    model = _tiny_nfnet()
    from_haiku(params, model)
    diff = float(np.abs(_forward(model, x) - want).max())
    print(f"haiku tiny NFNet vs numpy: max |Δlogits| = {diff:.2e}")
    assert diff < ATOL, diff
    assert np.abs(want).max() > 0.1  # the check is not vacuous


def test_haiku_flat_form_loads_identically(haiku_case):
    params = haiku_case[0]
    nested, flat = _tiny_nfnet(), _tiny_nfnet()
    from_haiku(params, nested)
    flat_params = _flatten_haiku_tree(params)
    assert "NFNet.nf_block_1.conv0.w" in flat_params
    from_haiku(flat_params, flat)
    _assert_same(_snapshot(nested), _snapshot(flat))


def test_haiku_errors(haiku_case):
    params = {k: dict(v) for k, v in haiku_case[0].items()}
    del params["NFNet/~/nf_block_2/~/conv1b"]["gain"]
    model = _tiny_nfnet()
    before = _snapshot(model)
    with pytest.raises(ValueError, match="NFNet/~/nf_block_2/~/conv1b/gain"):
        from_haiku(params, model)
    flat = _flatten_haiku_tree(haiku_case[0])
    flat["NFNet.nf_block_3.conv1.w"] = flat["NFNet.nf_block_3.conv1.w"][:, :, :8]
    pattern = r"NFNet\.nf_block_3\.conv1\.w.*\(3, 3, 8, 48\).*\(3, 3, 16, 48\)"
    with pytest.raises(ValueError, match=pattern):
        from_haiku(flat, model)
    _assert_same(before, _snapshot(model))


def test_haiku_nf_resnet_names():
    """NF_ResNet naming: initial_conv, nf_res_block_<global index>, conv_shortcut, linear."""
    model = create("nf-resnet-50", rngs=nnx.Rngs(0), num_classes=10, depths=(1, 1, 2, 1),
                   widths=(32, 64, 96, 128), stem_width=16)
    state = nnx.to_flat_state(nnx.state(model, nnx.Param))
    rng = np.random.default_rng(1)
    params: dict = {}
    names = {"conv1": "conv0", "conv2": "conv1", "conv3": "conv2", "downsample": "conv_shortcut"}
    for path, v in state:  # names written out per the deepmind nf_resnet.py module tree
        shape = v[...].shape
        if path[0] == "stem":
            mod, leaf = "NF_ResNet/~/initial_conv", path[-1]
        elif path[0] == "head":
            mod, leaf = "NF_ResNet/~/linear", path[-1]
        else:
            g = sum(model.cfg.depths[: path[1]]) + path[2]
            blk = "NF_ResNet/~/nf_res_block" + (f"_{g}" if g else "")
            mod = blk if len(path) == 4 else f"{blk}/~/{names[path[3]]}"  # 4: skip_gain
            leaf = path[-1]
        leaf = {"kernel": "w", "bias": "b" if mod.endswith("linear") else "bias"}.get(leaf, leaf)
        params.setdefault(mod, {})[leaf] = rng.normal(size=shape).astype(np.float32)
    assert "NF_ResNet/~/nf_res_block_4/~/conv_shortcut" in params
    from_haiku(params, model)
    np.testing.assert_array_equal(
        model.stem.conv.kernel[...], params["NF_ResNet/~/initial_conv"]["w"]
    )
    np.testing.assert_array_equal(
        model.stages[2][1].conv2.kernel[...], params["NF_ResNet/~/nf_res_block_3/~/conv1"]["w"]
    )
    np.testing.assert_array_equal(
        model.stages[3][0].downsample.kernel[...],
        params["NF_ResNet/~/nf_res_block_4/~/conv_shortcut"]["w"],
    )
    np.testing.assert_array_equal(model.head.bias[...], params["NF_ResNet/~/linear"]["b"])


def test_load_haiku_file_round_trips(tmp_path, haiku_case):
    params = haiku_case[0]
    pkl = tmp_path / "F0_haiku.npz"  # DeepMind's files are pickles despite the suffix
    pkl.write_bytes(pickle.dumps(params))
    loaded = load_haiku_file(pkl)
    assert loaded.keys() == params.keys()
    for mod in params:
        assert loaded[mod].keys() == params[mod].keys()
        for k in params[mod]:
            np.testing.assert_array_equal(loaded[mod][k], params[mod][k])
    npz = tmp_path / "flat.npz"  # a genuine npz with flat keys
    np.savez(npz, **_flatten_haiku_tree(params))
    a, b = _tiny_nfnet(), _tiny_nfnet()
    from_haiku(loaded, a)
    from_haiku(load_haiku_file(npz), b)
    _assert_same(_snapshot(a), _snapshot(b))
