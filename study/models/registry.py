"""One registry of named models with uniform names and uniform knobs (as timm's registry).

``create("nfnet-f3", rngs=..., num_classes=10, stochdepth_rate=0.1, width_mult=0.5)``. Every
architectural knob an ablation grid sweeps is an override. Besides the raw config fields of
:class:`~study.models.nfnet.NFConfig` / :class:`~study.models.resnet.ResNetConfig`, three named
rules derive the stage shapes:

- ``depth_rule="nfnet"``: depths = [1, 2, 6, 3] × ``depth`` (F0 is depth 1, F6 is depth 7);
- ``depth_rule="resnet"``: the classic ResNet growth, ``depth`` ∈ {26, 50, 101, 152, 200};
- ``width_pattern="nfnet"`` ([256, 512, 1536, 1536]) or ``"resnet"`` (doubling
  [256, 512, 1024, 2048]), times ``width_mult``;
- ``convention="deepmind" | "timm"`` switches WS epsilon, exact vs tanh GELU and padding (and,
  for NF-ResNets, timm's avg-pool shortcut, conv-folded γ and zero-gain init instead of SkipInit).

Explicit ``depths=`` / ``widths=`` overrides win over the rules.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from study.models.nfnet import NORMS, NFConfig
from study.models.resnet import ResNetConfig

NFNET_DEPTHS = (1, 2, 6, 3)
RESNET_DEPTHS = {
    26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3),
}
WIDTH_PATTERNS = {"nfnet": (256, 512, 1536, 1536), "resnet": (256, 512, 1024, 2048)}
# NFNets Table 1 (+ F7 from the official code): dropout, train/test resolution, RandAugment.
NFNET_VARIANTS = {
    0: (0.2, 192, 256, (4, 5)), 1: (0.3, 224, 320, (4, 10)), 2: (0.4, 256, 352, (4, 10)),
    3: (0.4, 320, 416, (4, 15)), 4: (0.5, 384, 512, (4, 15)), 5: (0.5, 416, 544, (4, 15)),
    6: (0.5, 448, 576, (4, 15)), 7: (0.5, 480, 608, (4, 15)),
}
META_KEYS = ("depth_rule", "depth", "width_pattern", "width_mult", "convention")


@dataclasses.dataclass(frozen=True)
class Preset:
    family: str  # nfnet | nf-resnet | resnet
    fields: dict[str, Any]  # config fields
    rules: dict[str, Any]  # depth_rule, depth, width_pattern, width_mult, convention
    train_resolution: int
    test_resolution: int
    randaugment: tuple[int, int] | None = None
    description: str = ""


def _nf_resnet_fields() -> dict[str, Any]:
    # deepmind-research/nfnets nf_resnet.py: 7x7/2 stem + max-pool, bottleneck 0.25, strided 1×1
    # projection, α 0.2, SkipInit, ReLU, no SE, no final conv.
    return dict(
        stem="resnet", stem_width=64, bottleneck_ratio=0.25, group_width=None, extra_conv=False,
        se_ratio=0.0, activation="relu", stochdepth_rate=0.1, dropout=0.0, final_conv_mult=0.0,
        shortcut="conv",
    )


def _build() -> dict[str, Preset]:
    p: dict[str, Preset] = {}
    for f, (drop, train_res, test_res, ra) in NFNET_VARIANTS.items():
        p[f"nfnet-f{f}"] = Preset(
            "nfnet", dict(dropout=drop),
            dict(depth_rule="nfnet", depth=f + 1, width_pattern="nfnet", width_mult=1.0,
                 convention="deepmind"),
            train_res, test_res, ra, f"NFNet-F{f} (Table 1{', official code' if f == 7 else ''})",
        )
    for d in RESNET_DEPTHS:
        rules = dict(depth_rule="resnet", depth=d, width_pattern="resnet", width_mult=1.0,
                     convention="deepmind")
        p[f"nf-resnet-{d}"] = Preset(
            "nf-resnet", _nf_resnet_fields(), rules, 224, 224, None,
            f"NF-ResNet-{d} (the paper's AGC batch-size study)",
        )
        p[f"resnet-{d}"] = Preset(
            "resnet", {}, rules, 224, 224, None, f"BatchNorm ResNet-{d} baseline"
        )
    # CPU-scale presets for 28×28 greyscale Fashion-MNIST: one 3×3 stride-2 stem conv, 1/8 widths
    # (stride 1 makes a train step 4-8× slower on 2 CPU cores).
    nano = dict(in_channels=1, num_classes=10, stem="conv3", stem_width=16, stem_stride=2)
    explicit = dict(depth_rule="explicit", depth=0, width_mult=0.125, convention="deepmind")
    p["nfnet-nano"] = Preset(
        "nfnet", dict(nano, depths=(1, 1, 1, 1), group_width=16, dropout=0.2),
        dict(explicit, width_pattern="nfnet"), 28, 28, None,
        "NFNet block (two grouped 3×3, SE, final conv ×2) at 1/8 width, 28×28×1",
    )
    p["nf-resnet-nano"] = Preset(
        "nf-resnet", dict(_nf_resnet_fields(), **nano, depths=(1, 1, 1, 1)),
        dict(explicit, width_pattern="resnet"), 28, 28, None,
        "NF-ResNet block at 1/8 width, 28×28×1",
    )
    p["resnet-nano"] = Preset(
        "resnet", dict(nano, depths=(1, 1, 1, 1)),
        dict(explicit, width_pattern="resnet"), 28, 28, None,
        "BatchNorm ResNet, same topology as nf-resnet-nano",
    )
    return p


PRESETS: dict[str, Preset] = _build()


def names() -> list[str]:
    """Every registered model name."""
    return sorted(PRESETS, key=lambda n: (PRESETS[n].family, len(n), n))


def _convention(family: str, convention: str) -> dict[str, Any]:
    if convention == "deepmind":
        if family == "resnet":
            return dict(padding="same")
        return dict(ws_eps="deepmind", gelu_approximate=True, padding="same", gamma_in="act")
    if convention == "timm":
        if family == "resnet":
            return dict(padding="symmetric")
        if family == "nfnet":  # timm dm_nfnet_*: γ in the activation, TF 'SAME' padding
            return dict(ws_eps="timm", gelu_approximate=False, padding="same", gamma_in="act")
        # timm nf_resnet*: γ folded into the convs, avg-pool shortcut, zero-init conv3 gain.
        return dict(ws_eps="timm", gelu_approximate=False, padding="symmetric", gamma_in="conv",
                    shortcut="avgpool", skipinit=False)
    raise ValueError(f"convention: unknown {convention!r}; valid: deepmind, timm")


def _scaled_widths(pattern: str, mult: float, n: int) -> tuple[int, ...]:
    if pattern not in WIDTH_PATTERNS:
        raise ValueError(f"width_pattern: unknown {pattern!r}; valid: {', '.join(WIDTH_PATTERNS)}")
    if not mult > 0:
        raise ValueError(f"width_mult: must be > 0, got {mult}")
    base = WIDTH_PATTERNS[pattern]
    if n != len(base):
        raise ValueError(f"width_pattern: {pattern!r} has {len(base)} stages, depths has {n}")
    return tuple(max(1, int(round(w * mult))) for w in base)


def _depths(rule: str, depth: int, explicit: tuple[int, ...] | None) -> tuple[int, ...]:
    if rule == "nfnet":
        if not (isinstance(depth, int) and depth >= 1):
            raise ValueError(f"depth: the nfnet rule needs an integer N >= 1, got {depth!r}")
        return tuple(d * depth for d in NFNET_DEPTHS)
    if rule == "resnet":
        if depth not in RESNET_DEPTHS:
            raise ValueError(
                f"depth: the resnet rule takes {', '.join(map(str, RESNET_DEPTHS))}, got {depth!r}"
            )
        return RESNET_DEPTHS[depth]
    if rule == "explicit":
        if explicit is None:
            raise ValueError("depths: depth_rule 'explicit' needs depths=(...)")
        return explicit
    raise ValueError(f"depth_rule: unknown {rule!r}; valid: nfnet, resnet, explicit")


def valid_overrides(name: str) -> list[str]:
    preset = _preset(name)
    cls = ResNetConfig if preset.family == "resnet" else NFConfig
    return sorted([f.name for f in dataclasses.fields(cls)] + list(META_KEYS))


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"model: unknown {name!r}; valid: {', '.join(names())}")
    return PRESETS[name]


def resolve(name: str, **overrides: Any) -> NFConfig | ResNetConfig:
    """The full config of ``name`` with ``overrides`` applied (validated, nothing built)."""
    preset = _preset(name)
    valid = valid_overrides(name)
    for key in overrides:
        if key not in valid:
            raise ValueError(f"{key}: not a knob of {name!r}; valid: {', '.join(valid)}")
    ov = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    rules = {**preset.rules, **{k: ov.pop(k) for k in META_KEYS if k in ov}}
    fields = {**preset.fields, **_convention(preset.family, rules["convention"])}
    if "depth_rule" in overrides or "depth" in overrides:
        fields.pop("depths", None)  # a rule given now replaces the preset's explicit depths
    depths = _depths(rules["depth_rule"], rules["depth"], ov.get("depths", fields.get("depths")))
    widths = _scaled_widths(rules["width_pattern"], rules["width_mult"], len(depths))
    fields.update(depths=depths, widths=widths)
    fields.update(ov)
    cls = ResNetConfig if preset.family == "resnet" else NFConfig
    try:
        cfg = cls(**fields)
    except TypeError as e:  # pragma: no cover - guarded by the key check above
        raise ValueError(str(e)) from None
    _check(cfg)
    return cfg


_CHOICES = {
    "stem": ("deep_quad", "resnet", "conv3"), "shortcut": ("avgpool", "conv"),
    "ws_eps": ("deepmind", "timm"), "padding": ("same", "symmetric"), "gamma_in": ("act", "conv"),
    "norm": NORMS,
}


def _check(cfg: NFConfig | ResNetConfig) -> None:
    from study.models.activations import NAMES

    for key, choices in _CHOICES.items():
        value = getattr(cfg, key, None)
        if value is not None and value not in choices:
            raise ValueError(f"{key}: unknown {value!r}; valid: {', '.join(choices)}")
    for key in ("activation", "se_activation"):
        value = getattr(cfg, key, None)
        if value is not None and value not in NAMES:
            raise ValueError(f"{key}: unknown {value!r}; valid: {', '.join(NAMES)}")
    if not (len(cfg.depths) == len(cfg.widths) == len(cfg.strides)):
        raise ValueError(
            f"depths: {len(cfg.depths)} stages but widths has {len(cfg.widths)} and strides "
            f"{len(cfg.strides)}"
        )
    if any((not isinstance(d, int)) or d < 1 for d in cfg.depths):
        raise ValueError(f"depths: every stage needs an integer depth >= 1, got {cfg.depths}")
    for key in ("dropout", "stochdepth_rate"):
        value = getattr(cfg, key, 0.0)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{key}: must be in [0, 1), got {value}")
    if cfg.num_classes < 1 or cfg.in_channels < 1:
        raise ValueError("num_classes and in_channels must be >= 1")
