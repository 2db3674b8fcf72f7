"""Normalizer-Free networks: NFNet-F* and NF-ResNets in one configurable Flax NNX module.

Both families are pre-activation bottleneck ResNets without normalisation (NFNets App. C;
deepmind-research/nfnets `nfnet.py`, `nf_resnet.py`; timm `NormFreeNet`). Every block computes

    h = γ·act(x) · β
    shortcut = x                       (no shape change)
             | conv1x1(avgpool(h))     (``shortcut="avgpool"``: NFNet, ResNet-D)
             | conv1x1_stride(h)       (``shortcut="conv"``: DeepMind NF-ResNet)
    out = conv1x1 → act → conv3x3(stride, groups) [→ act → conv3x3] → act → conv1x1
    out = 2·SE(out)·out → stochastic depth → × skip_gain (SkipInit, init 0)
    return out · α + shortcut

β = 1/sqrt(expected variance): the variance starts at 1, grows by α² per block and is reset to
1 after each stage's first (transition) block, which still gets one α² of growth
(`NFNet.__init__`, paper-recipe §5). Parameter names follow timm's state_dict keys, so the
converters in :mod:`study.convert` are tables, not code.

``norm="batchnorm"`` is the paper's "−NF, +BN" row (Table 6, §6.1): the same network with
BatchNorm instead of the NF strategy. Every conv is a plain conv (no WS, gain or bias) followed
by BatchNorm (the BN-ResNet's momentum and epsilon; batch statistics in ``train()``, running
averages in ``eval()``; no cross-replica sync); β = α = 1, no SkipInit scalar (the last BN of
each residual branch starts with scale 0, so every block starts as its shortcut), activations
without γ. Stem, widths, depths, groups, SE, stochastic depth, dropout and the final conv are
the NF model's. BN layers are ``bn1``, ``bn2``, ``bn2b``, ``bn3``, ``downsample_bn`` in a block,
``bn``/``bn1``…``bn4`` in the stem and ``final_bn``; their leaves are ``scale`` and ``bias``
(no weight decay, :data:`study.engine.optim.NO_DECAY`) and the ``mean``/``var`` batch stats.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from study.models.activations import GAMMA
from study.models import batch_norm
from study.models.backbone import Backbone
from study.models.activations import activation as make_activation
from study.models.layers import Linear, normal_init, StochasticDepth, avg_pool_2x2, max_pool_3x3
from study.models.resnet import ResNetConfig
from study.models.squeeze_excite import SqueezeExcite
from study.models.ws_conv import Conv2d, WSConv2d

NORMS = ("nf", "batchnorm")


@dataclasses.dataclass(frozen=True)
class NFConfig:
    """Every knob of a Normalizer-Free network. Defaults are NFNet-F0 as the official code."""

    depths: tuple[int, ...] = (1, 2, 6, 3)
    widths: tuple[int, ...] = (256, 512, 1536, 1536)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    stem: str = "deep_quad"  # deep_quad (NFNet) | resnet (7x7/2 + maxpool) | conv3 (one 3x3)
    stem_width: int = 128
    stem_stride: int = 1  # only for stem="conv3"
    bottleneck_ratio: float = 0.5  # of the block's output width
    group_width: int | None = 128  # None: ungrouped 3x3 convs
    extra_conv: bool = True  # NFNet's second 3x3 conv
    se_ratio: float = 0.5  # 0 disables squeeze-excite
    se_activation: str = "relu"  # official code; the paper's text says GELU
    attn_gain: float = 2.0
    activation: str = "gelu"
    alpha: float = 0.2
    stochdepth_rate: float = 0.25
    stochdepth_scale_by_keep: bool = False
    dropout: float = 0.2
    final_conv_mult: float = 2.0  # 0: no final conv (NF-ResNet)
    shortcut: str = "avgpool"  # avgpool | conv
    skipinit: bool = True  # scalar skip gain at 0; False: zero-init the last conv's gain (timm)
    ws_eps: str = "deepmind"  # deepmind: max(N·var, 1e-4) | timm: N·(var + 1e-5)
    gelu_approximate: bool = True  # jax.nn.gelu default (DeepMind); timm uses exact erf
    padding: str = "same"  # same (TF/Haiku) | symmetric (PyTorch)
    gamma_in: str = "act"  # act: γ·act(x) | conv: γ folded into every conv (timm non-dm models)
    norm: str = "nf"  # nf | batchnorm: the paper's "−NF, +BN" NFNet (Table 6)
    fc_init_std: float = 0.01
    in_channels: int = 3
    num_classes: int = 1000


def block_betas(depths: tuple[int, ...], alpha: float) -> list[float]:
    """β for every block, in order (the expected-variance bookkeeping)."""
    betas, var = [], 1.0
    for depth in depths:
        for i in range(depth):
            betas.append(1.0 / math.sqrt(var))
            if i == 0:
                var = 1.0
            var += alpha**2
    return betas


def expected_variances(depths: tuple[int, ...], alpha: float) -> list[float]:
    """Expected variance of the residual stream after every block (transition: 1 + α²)."""
    out, var = [], 1.0
    for depth in depths:
        for i in range(depth):
            if i == 0:
                var = 1.0
            var += alpha**2
            out.append(var)
    return out


class BatchNorm(batch_norm.BatchNorm):
    """The BN-ResNet's BatchNorm (momentum, epsilon) for the NFNet's "−NF, + BN" variant."""

    def __init__(self, ch: int, *, zero: bool = False, rngs: nnx.Rngs):
        super().__init__(
            ch, momentum=ResNetConfig.bn_momentum, epsilon=ResNetConfig.bn_epsilon,
            scale_init=nnx.initializers.zeros if zero else nnx.initializers.ones, rngs=rngs,
        )


def _check_norm(cfg: NFConfig) -> bool:
    """True for the BatchNorm variant; raises on an unknown ``norm``."""
    if cfg.norm not in NORMS:
        raise ValueError(f"norm: unknown {cfg.norm!r}; valid: {', '.join(NORMS)}")
    return cfg.norm == "batchnorm"


def _conv_factory(cfg: NFConfig, rngs: nnx.Rngs):
    """``conv(i, o, k, **kw)``: a WS conv (NF) or a plain bias-free conv (BatchNorm)."""
    if _check_norm(cfg):
        return lambda i, o, k, gain_init=1.0, **kw: Conv2d(  # noqa: E731
            i, o, k, padding=cfg.padding, rngs=rngs, **kw
        )
    gamma_conv = GAMMA[cfg.activation] if cfg.gamma_in == "conv" else 1.0
    return lambda i, o, k, **kw: WSConv2d(  # noqa: E731
        i, o, k, padding=cfg.padding, eps_style=cfg.ws_eps, gamma=gamma_conv, rngs=rngs, **kw
    )


def _bn(bn: BatchNorm | None, x: jax.Array) -> jax.Array:
    return x if bn is None else bn(x)


def _mid_width(out_ch: int, cfg: NFConfig) -> tuple[int, int]:
    width = int(out_ch * cfg.bottleneck_ratio)
    if cfg.group_width is None:
        return width, 1
    groups = width // cfg.group_width
    if groups < 1:
        raise ValueError(
            f"group_width: {cfg.group_width} exceeds the bottleneck width {width} "
            f"(output {out_ch} × bottleneck_ratio {cfg.bottleneck_ratio})"
        )
    return groups * cfg.group_width, groups


class NFBlock(nnx.Module):
    def __init__(
        self, in_ch: int, out_ch: int, stride: int, beta: float, drop_rate: float,
        cfg: NFConfig, *, rngs: nnx.Rngs,
    ):
        batchnorm = _check_norm(cfg)
        conv = _conv_factory(cfg, rngs)
        bn = lambda ch, zero=False: BatchNorm(ch, zero=zero, rngs=rngs) if batchnorm else None  # noqa: E731
        mid, groups = _mid_width(out_ch, cfg)
        self.act = make_activation(
            cfg.activation, gelu_approximate=cfg.gelu_approximate,
            gamma=cfg.gamma_in == "act" and not batchnorm,
        )
        # BatchNorm: plain residual sum, no variance bookkeeping.
        self.beta, self.alpha = (1.0, 1.0) if batchnorm else (beta, cfg.alpha)
        self.stride = stride
        self.shortcut_kind = cfg.shortcut
        sc_stride = stride if cfg.shortcut == "conv" else 1
        project = stride > 1 or in_ch != out_ch
        self.downsample = conv(in_ch, out_ch, 1, stride=sc_stride) if project else None
        self.downsample_bn = bn(out_ch) if project else None
        self.conv1, self.bn1 = conv(in_ch, mid, 1), bn(mid)
        self.conv2, self.bn2 = conv(mid, mid, 3, stride=stride, groups=groups), bn(mid)
        self.conv2b = conv(mid, mid, 3, groups=groups) if cfg.extra_conv else None
        self.bn2b = bn(mid) if cfg.extra_conv else None
        self.conv3 = conv(mid, out_ch, 1, gain_init=1.0 if cfg.skipinit else 0.0)
        self.bn3 = bn(out_ch, zero=True)  # BatchNorm's SkipInit: the branch starts at 0
        self.attn_gain = cfg.attn_gain
        self.se = SqueezeExcite(
            out_ch, cfg.se_ratio, activation=cfg.se_activation,
            gelu_approximate=cfg.gelu_approximate, rngs=rngs,
        ) if cfg.se_ratio > 0 else None
        self.drop_path = StochasticDepth(
            drop_rate, scale_by_keep=cfg.stochdepth_scale_by_keep, rngs=rngs
        )
        self.skip_gain = (
            nnx.Param(jnp.zeros((), jnp.float32)) if cfg.skipinit and not batchnorm else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.act(x) * self.beta
        shortcut = x
        if self.downsample is not None:
            pooled = out
            if self.stride > 1 and self.shortcut_kind == "avgpool":
                pooled = avg_pool_2x2(out)
            shortcut = _bn(self.downsample_bn, self.downsample(pooled))
        out = _bn(self.bn1, self.conv1(out))
        out = _bn(self.bn2, self.conv2(self.act(out)))
        if self.conv2b is not None:
            out = _bn(self.bn2b, self.conv2b(self.act(out)))
        out = _bn(self.bn3, self.conv3(self.act(out)))
        # The branch's per-example and per-channel factors (SE gate, stochastic-depth mask, skip
        # gain, α) multiplied together first, then once into the activation: one full-size
        # multiply forward and backward instead of four (nfnet-nano, batch 256, 14 px, one core:
        # 74.1 → 69.5 ms a step; NFNet-F1's compile unchanged).
        scale = jnp.asarray(self.alpha, out.dtype)
        if self.skip_gain is not None:
            scale = scale * self.skip_gain[...].astype(out.dtype)
        mask = self.drop_path.mask(out)
        if mask is not None:
            scale = scale * mask
        if self.se is not None:
            scale = scale * (self.attn_gain * self.se(out))
        return out * scale + shortcut


class Stem(nnx.Module):
    def __init__(self, cfg: NFConfig, *, rngs: nnx.Rngs):
        batchnorm = _check_norm(cfg)
        conv = _conv_factory(cfg, rngs)
        bn = lambda ch: BatchNorm(ch, rngs=rngs) if batchnorm else None  # noqa: E731
        self.kind, self.padding = cfg.stem, cfg.padding
        self.act = make_activation(
            cfg.activation, gelu_approximate=cfg.gelu_approximate,
            gamma=cfg.gamma_in == "act" and not batchnorm,
        )
        c, w = cfg.in_channels, cfg.stem_width
        if cfg.stem == "deep_quad":
            # 16 (s2) → 32 → 64 → width (s2), activation between convs, none after the last.
            chs = (w // 8, w // 4, w // 2, w)
            self.conv1, self.bn1 = conv(c, chs[0], 3, stride=2), bn(chs[0])
            self.conv2, self.bn2 = conv(chs[0], chs[1], 3), bn(chs[1])
            self.conv3, self.bn3 = conv(chs[1], chs[2], 3), bn(chs[2])
            self.conv4, self.bn4 = conv(chs[2], chs[3], 3, stride=2), bn(chs[3])
        elif cfg.stem == "resnet":
            self.conv, self.bn = conv(c, w, 7, stride=2), bn(w)
        elif cfg.stem == "conv3":
            self.conv, self.bn = conv(c, w, 3, stride=cfg.stem_stride), bn(w)
        else:
            raise ValueError(f"stem: unknown {cfg.stem!r}; valid: deep_quad, resnet, conv3")

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind == "deep_quad":
            x = self.act(_bn(self.bn1, self.conv1(x)))
            x = self.act(_bn(self.bn2, self.conv2(x)))
            x = self.act(_bn(self.bn3, self.conv3(x)))
            return _bn(self.bn4, self.conv4(x))
        x = _bn(self.bn, self.conv(x))
        return max_pool_3x3(x, self.padding) if self.kind == "resnet" else x


class NormFreeNet(Backbone):
    """An NFNet or NF-ResNet. Input NHWC; output logits (no softmax)."""

    def __init__(self, cfg: NFConfig, *, rngs: nnx.Rngs):
        if not (len(cfg.depths) == len(cfg.widths) == len(cfg.strides)):
            raise ValueError("depths, widths and strides must have the same length")
        self.cfg = cfg
        batchnorm = _check_norm(cfg)
        self.stem = Stem(cfg, rngs=rngs)
        num_blocks = sum(cfg.depths)
        betas = block_betas(cfg.depths, cfg.alpha)
        stages, index, ch = [], 0, cfg.stem_width
        for width, depth, stride in zip(cfg.widths, cfg.depths, cfg.strides):
            blocks = []
            for i in range(depth):
                # Linear stochastic-depth ramp from 0 at the first block (official code).
                rate = cfg.stochdepth_rate * index / num_blocks
                blocks.append(NFBlock(
                    ch, width, stride if i == 0 else 1, betas[index], rate, cfg, rngs=rngs
                ))
                ch, index = width, index + 1
            stages.append(nnx.List(blocks))
        self.stages = nnx.List(stages)
        out = int(cfg.final_conv_mult * ch) if cfg.final_conv_mult else ch
        self.final_conv = _conv_factory(cfg, rngs)(ch, out, 1) if cfg.final_conv_mult else None
        self.final_bn = (
            BatchNorm(out, rngs=rngs) if batchnorm and cfg.final_conv_mult else None
        )
        ch = out
        # The final activation carries γ only when γ lives in the activations: with
        # gamma_in="conv" timm applies the bare activation before pooling (BatchNorm: never).
        self.final_act = make_activation(
            cfg.activation, gelu_approximate=cfg.gelu_approximate,
            gamma=cfg.gamma_in == "act" and not batchnorm,
        )
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.head = Linear(
            ch, cfg.num_classes,
            kernel_init=normal_init(cfg.fc_init_std), rngs=rngs,
        )
        self.num_features = ch

    def stem_forward(self, x: jax.Array) -> jax.Array:
        return self.stem(x)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.features(x)
        if self.final_conv is not None:
            x = _bn(self.final_bn, self.final_conv(x))
        x = jnp.mean(self.final_act(x), axis=(1, 2))
        x = self.dropout(x)
        return self.head(x.astype(jnp.float32))
