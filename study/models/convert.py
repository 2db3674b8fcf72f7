"""Load pretrained NFNet / NF-ResNet weights from timm or DeepMind's Haiku release.

Sources (see shared/reference/library-notes.md §1a):

- timm 1.0.31 ``timm/models/nfnet.py`` (``NormFreeNet``) and ``timm/layers/std_conv.py``: PyTorch
  layouts, conv ``weight`` OIHW, ``gain`` (O,1,1,1), SE ``attn_last.fc{1,2}`` are 1×1 convs,
  ``head.fc.weight`` (out, in), ``skipinit_gain`` ().
- deepmind-research/nfnets ``nfnet.py``, ``nf_resnet.py``, ``base.py`` (``WSConv2D``: ``w`` HWIO,
  ``gain`` (O,), ``bias``; ``hk.Linear``: ``w`` (in, out), ``b``) and ``utils.py``
  (``load_haiku_file`` via dill, ``flatten_haiku_tree``). Haiku names blocks ``nf_block``,
  ``nf_block_1``, … (``nf_res_block…`` in ``NF_ResNet``) in global block order.

Our parameter names mirror timm's (study/models/nfnet.py), so each converter is a name table
plus a layout transform per leaf. The model must be built with the matching numerics:
``convention="timm"`` for timm weights (dm_nfnet_* and nf_resnet*) and the default
``convention="deepmind"`` for DeepMind's; a mismatch only warns, as a deliberate mismatch is a
legitimate experiment.

Both loaders validate every key and shape before assigning anything, so a failed load leaves
the model untouched.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["from_haiku", "from_timm", "load_haiku_file"]

Path = tuple[Any, ...]  # a leaf path in our tree, e.g. ('stages', 1, 0, 'conv2', 'kernel')
# A leaf plan: source key, the source shape we expect, and source array -> our layout.
Plan = tuple[str, tuple[int, ...], Callable[[np.ndarray], np.ndarray]]


def _param_leaves(model: nnx.Module) -> dict[Path, Any]:
    """Our Param leaves by path (pure arrays)."""
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    out: dict[Path, Any] = {}

    def walk(node: Any, prefix: Path) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, prefix + (k,))
        else:
            out[prefix] = node

    walk(pure, ())
    return out


def _assign(model: nnx.Module, values: dict[Path, np.ndarray]) -> None:
    """Writes validated arrays into the model in one go (dtype of the existing params)."""
    state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state)
    for path, value in values.items():
        node = pure
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = jnp.asarray(value, dtype=node[path[-1]].dtype)  # a copy, on device
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)


def _load(
    model: nnx.Module, source: Mapping[str, Any], plan_for: Callable[[Path, tuple], Plan],
    show: Callable[[str], str] = str,
) -> None:
    """Validates ``source`` against the plan of every model leaf, then assigns."""
    leaves = _param_leaves(model)
    plans = {path: plan_for(path, tuple(np.shape(v))) for path, v in leaves.items()}
    used: set[str] = set()
    new: dict[Path, np.ndarray] = {}
    for path, (key, src_shape, fn) in plans.items():
        where = "/".join(map(str, path))
        if key not in source:
            raise ValueError(
                f"missing key {show(key)!r} (expected shape {src_shape}) for model param {where}"
            )
        arr = np.asarray(source[key])
        if tuple(arr.shape) != src_shape:
            raise ValueError(
                f"wrong shape for {show(key)!r}: got {tuple(arr.shape)}, expected {src_shape} "
                f"(model param {where} has shape {tuple(np.shape(leaves[path]))})"
            )
        used.add(key)
        new[path] = fn(arr)
    extra = sorted(k for k in source if k not in used)
    if extra:
        arr = np.asarray(source[extra[0]])
        raise ValueError(
            f"unexpected key {show(extra[0])!r} (shape {tuple(arr.shape)}) matches no model param "
            f"(model shape: none; {len(extra)} unexpected key(s) in all)"
        )
    _assign(model, new)


def _check_convention(model: nnx.Module, want: str) -> None:
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "ws_eps"):
        raise ValueError(f"model: expected a NormFreeNet, got {type(model).__name__}")
    gelu = cfg.activation == "gelu" or cfg.se_activation == "gelu"
    bad = cfg.ws_eps != want or (gelu and cfg.gelu_approximate != (want == "deepmind"))
    if bad:  # Loads fine, but the logits will not match the source framework's.
        warnings.warn(
            f"model built with ws_eps={cfg.ws_eps!r}, gelu_approximate={cfg.gelu_approximate}; "
            f"{want} weights need convention={want!r} for output parity", stacklevel=3,
        )


# ---------------------------------------------------------------------------------------------
# timm


def _timm_plan(path: Path, shape: tuple) -> Plan:
    *mod, leaf = (str(p) for p in path)
    if mod and mod[-1] == "downsample":
        mod.append("conv")  # timm's DownsampleAvg holds the pool and `.conv`
    if len(mod) >= 2 and mod[-2] == "se":
        mod[-2] = "attn_last"  # SE after conv3 (timm's attn_last, not the mid-block `attn`)
    if mod == ["head"]:
        mod = ["head", "fc"]  # ClassifierHead
    name = {"kernel": "weight", "skip_gain": "skipinit_gain"}.get(leaf, leaf)
    key = ".".join(mod + [name])
    ident = lambda a: a  # noqa: E731
    if leaf == "kernel" and len(shape) == 4:  # conv HWIO <- OIHW
        h, w, i, o = shape
        return key, (o, i, h, w), lambda a: a.transpose(2, 3, 1, 0)
    if leaf == "kernel" and "attn_last" in mod:  # SE 1x1 conv (out, in, 1, 1) -> (in, out)
        return key, (shape[1], shape[0], 1, 1), lambda a: a[:, :, 0, 0].T
    if leaf == "kernel":  # Linear (out, in) -> (in, out)
        return key, (shape[1], shape[0]), lambda a: a.T
    if leaf == "gain":  # (O, 1, 1, 1) -> (O,)
        return key, (shape[0], 1, 1, 1), lambda a: a.reshape(shape)
    return key, shape, ident  # bias, skipinit_gain


def from_timm(state_dict: Mapping[str, np.ndarray], model: nnx.Module) -> None:
    """Loads a timm ``NormFreeNet`` state_dict (dm_nfnet_f*, nf_resnet*) into ``model`` in place.

    ``state_dict`` maps timm keys to arrays in PyTorch layout (e.g. from
    ``safetensors.numpy.load_file`` or ``{k: v.numpy() for k, v in sd.items()}``). Build the
    model with ``convention="timm"``. Raises ``ValueError`` on a missing, unexpected or
    wrongly-shaped key, before anything is modified.
    """
    _check_convention(model, "timm")
    _load(model, state_dict, _timm_plan)


# ---------------------------------------------------------------------------------------------
# DeepMind Haiku

_HK_BLOCK = {"conv1": "conv0", "conv2": "conv1", "conv2b": "conv1b", "conv3": "conv2",
             "downsample": "conv_shortcut"}


def _flat_name(module: str, param: str) -> str:
    """DeepMind's ``utils.flatten_haiku_tree`` key for ``module``/``param``."""
    return f"{module.replace('/~/', '.').replace('/', '.')}.{param}"


def _haiku_plan(model: nnx.Module, nested: dict[str, str]) -> Callable[[Path, tuple], Plan]:
    """The plan of every leaf; also records each flat key's nested name in ``nested``."""
    resnet = getattr(model.stem, "kind", None) == "resnet"
    top, block = ("NF_ResNet", "nf_res_block") if resnet else ("NFNet", "nf_block")
    offsets, n = [], 0  # Haiku numbers blocks globally: stage s, block b -> offsets[s] + b
    for stage in model.stages:
        offsets.append(n)
        n += len(stage)

    def plan(path: Path, shape: tuple) -> Plan:
        *mod, leaf = path
        if mod[0] == "stem":  # deep_quad conv1..4 -> stem_conv0..3; 7x7 stem -> initial_conv
            sub = ["initial_conv" if mod[1] == "conv" else f"stem_conv{int(mod[1][-1]) - 1}"]
        elif mod[0] == "stages":
            g = offsets[mod[1]] + mod[2]
            sub = [block if g == 0 else f"{block}_{g}"]
            rest = mod[3:]
            if rest[:1] == ["se"]:
                sub += ["squeeze_excite", {"fc1": "linear", "fc2": "linear_1"}[rest[1]]]
            elif rest:
                sub.append(_HK_BLOCK[rest[0]])
        elif mod[0] == "final_conv":
            sub = ["final_conv"]
        elif mod[0] == "head":
            sub = ["linear"]
        else:
            raise ValueError(f"no Haiku name for model param {'/'.join(map(str, path))}")
        linear = sub[-1].startswith("linear")
        param = {"kernel": "w", "bias": "b" if linear else "bias"}.get(leaf, leaf)
        module = "/~/".join([top] + sub)
        key = _flat_name(module, param)
        nested[key] = f"{module}/{param}"
        return key, shape, lambda a: a

    return plan


def _flatten_haiku(params: Mapping) -> tuple[dict[str, Any], dict[str, str]]:
    """Flat-form params and a flat -> as-given key map (for error messages)."""
    flat, shown = {}, {}
    for module, value in params.items():
        if isinstance(value, Mapping):  # nested {module: {param: array}}
            for param, arr in value.items():
                key = _flat_name(module, param)
                flat[key], shown[key] = arr, f"{module}/{param}"
        else:  # already flat: 'NFNet.nf_block_1.conv0.w'
            flat[module], shown[module] = value, module
    return flat, shown


def from_haiku(params: Mapping, model: nnx.Module) -> None:
    """Loads DeepMind's released Haiku params (nested or flattened) into ``model`` in place.

    Accepts ``{'NFNet/~/nf_block/~/conv0': {'w', 'gain', 'bias'}, …}`` as Haiku stores it, or
    the flat ``{'NFNet.nf_block.conv0.w': …}`` of ``utils.flatten_haiku_tree``. Build the model
    with ``convention="deepmind"``. Errors as :func:`from_timm`.
    """
    _check_convention(model, "deepmind")
    flat, shown = _flatten_haiku(params)
    names: dict[str, str] = {}
    is_nested = any(isinstance(v, Mapping) for v in params.values())
    # Name keys in the caller's form: as given, else nested or flat like the input.
    show = lambda k: shown.get(k) or (names.get(k, k) if is_nested else k)  # noqa: E731
    _load(model, flat, _haiku_plan(model, names), show=show)


def load_haiku_file(path: str | os.PathLike) -> dict:
    """Reads a DeepMind params file (``F0_haiku.npz`` etc.) into a plain dict of numpy arrays.

    The release files are dill pickles despite the ``.npz`` suffix; a real (zip) npz with flat
    keys is read with ``np.load``. Pickles run code on load: only open trusted files.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:4] == b"PK\x03\x04":  # a genuine npz archive
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    try:
        obj = pickle.loads(raw)  # dill writes standard pickles for dicts of arrays
    except (ModuleNotFoundError, AttributeError) as e:
        raise ValueError(
            f"{os.fspath(path)}: pickle needs {e}; re-save it as a plain dict of numpy arrays "
            "where that library is installed"
        ) from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{os.fspath(path)}: expected a mapping, got {type(obj).__name__}")

    def plain(node: Any) -> Any:  # FlatMapping / jax arrays -> dict / numpy
        if isinstance(node, Mapping):
            return {k: plain(v) for k, v in node.items()}
        return np.asarray(node)

    return plain(obj)
