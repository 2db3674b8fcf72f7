"""Model zoo: NFNet-F0…F7, NF-ResNets, BatchNorm ResNets and CPU-scale nano presets.

Public API (later tooling calls exactly these):

- :func:`create` builds a model by registry name with overrides;
- :func:`names` lists the registry;
- :func:`count_params` counts parameters, also on ``nnx.eval_shape`` abstract models;
- :func:`flops` counts multiply-accumulates per image the way the paper does;
- :func:`structure` is both, disk-cached: what every other module reads.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from study.models import macs
from study.models.nfnet import NFConfig, NormFreeNet
from study.models.registry import PRESETS, names, resolve, valid_overrides
from study.models.resnet import ResNet, ResNetConfig
from study.models.counts import Structure, structure

__all__ = [
    "NFConfig", "NormFreeNet", "PRESETS", "ResNet", "ResNetConfig", "Structure", "build", "count_params",
    "create", "flops", "names", "resolve", "structure", "valid_overrides",
]


def build(cfg: NFConfig | ResNetConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """Builds a model from a resolved config."""
    return ResNet(cfg, rngs=rngs) if isinstance(cfg, ResNetConfig) else NormFreeNet(cfg, rngs=rngs)


def create(name: str, *, rngs: nnx.Rngs, num_classes: int = 1000, **overrides: Any) -> nnx.Module:
    """Builds the registered model ``name``; unknown names or knobs raise ``ValueError``.

    ``num_classes`` defaults to 1000 (ImageNet) except for the nano presets, whose own
    default (10, Fashion-MNIST) is kept unless given.
    """
    if name in PRESETS and "num_classes" in PRESETS[name].fields and num_classes == 1000:
        num_classes = PRESETS[name].fields["num_classes"]
    return build(resolve(name, num_classes=num_classes, **overrides), rngs=rngs)


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters (``nnx.Param``); BatchNorm statistics are not counted."""
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    return int(sum(math.prod(x.shape) for x in leaves))


def flops(name: str, resolution: int, **overrides: Any) -> float:
    """Multiply-accumulates for one image at ``resolution``, counted as the paper counts them.

    Convolutions and linear layers (squeeze-excite and classifier included), no biases,
    activations or pooling; traced abstractly, so F7 costs no memory.
    """
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()))
    graphdef, state, in_channels = _abstract_eval_model(name, key)
    x = jax.ShapeDtypeStruct((1, resolution, resolution, in_channels), jnp.float32)
    with macs.counting() as box:
        jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
    return box[0]


@functools.lru_cache(maxsize=32)
def _abstract_eval_model(name: str, overrides: tuple) -> tuple[Any, Any, int]:
    # Building F6 abstractly takes seconds; FLOPs at several resolutions reuse it.
    abstract = nnx.eval_shape(lambda: create(name, rngs=nnx.Rngs(0), **dict(overrides)))
    abstract.eval()
    graphdef, state = nnx.split(abstract)
    return graphdef, state, abstract.cfg.in_channels
