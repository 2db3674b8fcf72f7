"""The BatchNorm ResNet baseline the paper compares NF-ResNets against (Figure 2a).

Same bottleneck topology as the NF-ResNets in :mod:`study.models.nfnet` (bottleneck ratio 0.25,
strided 3×3, 1×1 strided projection shortcut, 7×7/2 stem with max-pool), but post-activation
with BatchNorm after every conv, as the standard ResNet-50 v1.5. ``model.train()`` uses batch
statistics and updates the running averages; ``model.eval()`` uses the running averages.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from study.models.activations import activation as make_activation
from study.models.batch_norm import BatchNorm
from study.models.backbone import Backbone
from study.models.layers import Linear, normal_init, max_pool_3x3
from study.models.ws_conv import Conv2d


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    depths: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (256, 512, 1024, 2048)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    stem: str = "resnet"  # resnet (7x7/2 + maxpool) | conv3 (one 3x3)
    stem_width: int = 64
    stem_stride: int = 1  # only for stem="conv3"
    bottleneck_ratio: float = 0.25
    activation: str = "relu"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    zero_init_residual: bool = False  # Goyal et al.'s zero-γ last BN of each block
    dropout: float = 0.0
    padding: str = "same"
    fc_init_std: float = 0.01
    in_channels: int = 3
    num_classes: int = 1000


def _bn(ch: int, cfg: ResNetConfig, rngs: nnx.Rngs, zero: bool = False) -> BatchNorm:
    return BatchNorm(
        ch, momentum=cfg.bn_momentum, epsilon=cfg.bn_epsilon,
        scale_init=nnx.initializers.zeros if zero else nnx.initializers.ones, rngs=rngs,
    )


class Bottleneck(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, cfg: ResNetConfig, *, rngs: nnx.Rngs):
        mid = int(out_ch * cfg.bottleneck_ratio)
        conv = lambda i, o, k, s=1: Conv2d(i, o, k, stride=s, padding=cfg.padding, rngs=rngs)  # noqa: E731
        self.act = make_activation(cfg.activation, gamma=False)
        self.conv1, self.bn1 = conv(in_ch, mid, 1), _bn(mid, cfg, rngs)
        self.conv2, self.bn2 = conv(mid, mid, 3, stride), _bn(mid, cfg, rngs)
        self.conv3 = conv(mid, out_ch, 1)
        self.bn3 = _bn(out_ch, cfg, rngs, zero=cfg.zero_init_residual)
        project = stride > 1 or in_ch != out_ch
        self.downsample = conv(in_ch, out_ch, 1, stride) if project else None
        self.downsample_bn = _bn(out_ch, cfg, rngs) if project else None

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x
        if self.downsample is not None:
            shortcut = self.downsample_bn(self.downsample(x))
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + shortcut)


class ResNet(Backbone):
    def __init__(self, cfg: ResNetConfig, *, rngs: nnx.Rngs):
        if not (len(cfg.depths) == len(cfg.widths) == len(cfg.strides)):
            raise ValueError("depths, widths and strides must have the same length")
        self.cfg = cfg
        k, s = (7, 2) if cfg.stem == "resnet" else (3, cfg.stem_stride)
        if cfg.stem not in ("resnet", "conv3"):
            raise ValueError(f"stem: unknown {cfg.stem!r}; valid: resnet, conv3")
        self.stem_conv = Conv2d(cfg.in_channels, cfg.stem_width, k, stride=s, padding=cfg.padding, rngs=rngs)
        self.stem_bn = _bn(cfg.stem_width, cfg, rngs)
        self.act = make_activation(cfg.activation, gamma=False)
        stages, ch = [], cfg.stem_width
        for width, depth, stride in zip(cfg.widths, cfg.depths, cfg.strides):
            blocks = []
            for i in range(depth):
                blocks.append(Bottleneck(ch, width, stride if i == 0 else 1, cfg, rngs=rngs))
                ch = width
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.head = Linear(
            ch, cfg.num_classes, kernel_init=normal_init(cfg.fc_init_std), rngs=rngs
        )
        self.num_features = ch

    def stem_forward(self, x: jax.Array) -> jax.Array:
        x = self.act(self.stem_bn(self.stem_conv(x)))
        return max_pool_3x3(x, self.cfg.padding) if self.cfg.stem == "resnet" else x

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.mean(self.features(x), axis=(1, 2))
        return self.head(self.dropout(x).astype(jnp.float32))
