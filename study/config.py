"""Run configuration: one flat, documented, validated set of keys.

A config is built from the defaults (the local default: a nano NF-ResNet on Fashion-MNIST with
AGC), then a YAML file (``--config``), then ``--set key=value`` overrides (values parsed as
YAML). Model knobs are ``model.<knob>`` keys (see :func:`study.models.valid_overrides`). Every
error names the offending key in one line and happens before anything is written.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import yaml


@dataclasses.dataclass(frozen=True)
class Key:
    """A config key: its default, help, type, and the values it may take (choices or bounds).

    Validation and ``study train --help`` are both generated from these fields.
    """

    default: Any
    help: str
    type: type | tuple[type, ...]
    choices: tuple[str, ...] | None = None
    min: float | None = None  # inclusive lower bound (``gt=True``: exclusive)
    gt: bool = False
    below: float | None = None  # exclusive upper bound

    def describe(self) -> str:
        """The allowed values in words, for --help."""
        if self.choices:
            return " | ".join(self.choices)
        if self.min is None:
            return ""
        text = f"> {self.min:g}" if self.gt else f">= {self.min:g}"
        return f"in [{self.min:g}, {self.below:g})" if self.below is not None else text

    def check(self, key: str, value: Any) -> None:
        if self.choices and value not in self.choices:
            raise ConfigError(f"{key}: unknown {value!r}; valid: {', '.join(self.choices)}")
        if self.min is None or value is None:
            return
        number = isinstance(value, float) or self.type != int
        if number and not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number {self.describe()}, got {value}")
        if self.below is not None:
            if not self.min <= value < self.below:
                raise ConfigError(f"{key}: must be {self.describe()}, got {value}")
        elif value < self.min or (self.gt and value == self.min):
            what = "a finite number " if number else ""
            raise ConfigError(f"{key}: must be {what}{self.describe()}, got {value}")


# The valid choices, owned here and imported wherever they are needed.
TASKS = ("train", "latency", "signal")
# Datasets and their number of classes (synthetic: ``num_classes``; an ImageNet folder: its own).
DATASET_CLASSES: dict[str, int | None] = {"fashion_mnist": 10, "cifar10": 10, "imagenet": 1000, "synthetic": None}
DATASETS = tuple(DATASET_CLASSES)
# Training-set sizes (an ImageNet folder may hold fewer; synthetic: ``synthetic_size``), for the
# step counts a grid derives before any data is read (``budget: steps``).
DATASET_TRAIN_SIZE: dict[str, int | None] = {"fashion_mnist": 60_000, "cifar10": 50_000,
                                             "imagenet": 1_281_167, "synthetic": None}
# In-memory datasets' native resolution: ``image_size`` area-downsamples them by a whole factor.
DATASET_NATIVE_SIZE: dict[str, int] = {"fashion_mnist": 28, "cifar10": 32}
IMAGENET_LAYOUTS = ("folder", "array_record")
AGC_GRANULARITIES = ("unit", "layer")
DTYPES = ("float32", "bfloat16")


# The defaults are the local scale's: they reach ≥ 0.88 Fashion-MNIST test top-1 on 2 CPU cores.
KEYS: dict[str, Key] = {
    "task": Key("train", "what the run does (latency: time training steps by the paper's protocol, App. A.2; signal: signal propagation at initialisation, §3)", str, choices=TASKS),
    "model": Key("nf-resnet-nano", "registry name (study models)", str),
    "dataset": Key("fashion_mnist", "the data set", str, choices=DATASETS),
    "data_dir": Key(None, "dataset directory (default: the dataset's own)", (str, type(None))),
    "imagenet_layout": Key("folder", "folder: train/<class>/*.JPEG; array_record: TFDS ArrayRecords", str, choices=IMAGENET_LAYOUTS),
    "image_size": Key(0, "ImageNet train resolution (0: the model's); Fashion-MNIST/CIFAR-10: both splits area-downsampled to it by a whole factor; synthetic image size", int, min=0),
    "eval_image_size": Key(0, "ImageNet eval resolution (0: the model's test resolution)", int, min=0),
    "mixup_cutmix": Key(False, "MixUp on half the batch, CutMix on the other (paper A.3)", bool),
    "mix_alpha": Key(0.2, "MixUp Beta(α, α)", (int, float), min=0, gt=True),
    "randaugment": Key(None, "[layers, magnitude] (F0: [4, 5]), after mixing; null: off", (list, type(None))),
    "data_workers": Key(0, "grain worker processes for decoding (ImageNet)", int, min=0),
    "num_classes": Key(10, "classes (synthetic data; real datasets set their own)", int, min=1),
    "synthetic_size": Key(2048, "examples in the synthetic train set", int, min=1),
    "batch_size": Key(256, "global batch size per optimizer step", int, min=1),
    "accum_steps": Key(1, "micro-batches accumulated into one step (exact full-batch grads)", int, min=1),
    "epochs": Key(5.0, "training length in epochs (ignored when steps > 0)", (int, float), min=0),
    "steps": Key(0, "training length in optimizer steps (0: from epochs); task=latency: timed steps (0: 20)", int, min=0),
    "base_lr": Key(0.1, "lr per 256 examples: peak lr = base_lr · batch_size / 256", (int, float), min=0, gt=True),
    "warmup_epochs": Key(1.0, "linear warmup from 0 (the paper: 5 epochs at ImageNet scale)", (int, float), min=0),
    "momentum": Key(0.9, "Nesterov momentum", (int, float), min=0),
    "nesterov": Key(True, "Nesterov (PyTorch-style, as the official code)", bool),
    "weight_decay": Key(2e-5, "L2 added to the gradient after AGC; not on gains, biases, skip gains", (int, float), min=0),
    "agc": Key(True, "adaptive gradient clipping on/off", bool),
    # λ = 0.01 is the paper's for batch 1024-4096; larger batches need smaller λ (§4.1), and at
    # batch 256 / lr 0.1 λ = 0.01 holds the zero-initialised skip gains near 0 for the ~1000
    # steps of a local run (measured: 0.67 top-1 after 5 epochs vs 0.89 with λ = 0.16).
    "agc_clipping": Key(0.16, "AGC threshold λ", (int, float), min=0, gt=True),
    "agc_eps": Key(1e-3, "AGC parameter-norm floor", (int, float), min=0, gt=True),
    "agc_granularity": Key("unit", "AGC norms per output unit, or per whole tensor", str, choices=AGC_GRANULARITIES),
    "agc_exclude": Key(["head/kernel"], "parameter path globs left unclipped", list),
    "label_smoothing": Key(0.1, "label smoothing", (int, float), min=0, below=1),
    "ema_decay": Key(0.999, "EMA decay with warmup min(decay, (1+t)/(10+t)) (paper: 0.99999)", (int, float), min=0, below=1),
    "seed": Key(0, "seed for init, data order, dropout", int, min=0),
    "log_every": Key(50, "steps between metric lines", int, min=1),
    "eval_every": Key(0, "steps between evaluations (0: once per epoch)", int, min=0),
    "checkpoint_every": Key(200, "steps between checkpoints", int, min=1),
    "keep_checkpoints": Key(2, "checkpoints kept", int, min=1),
    "loss_bound": Key(1e3, "a loss above this (or non-finite) ends the run as diverged", (int, float), min=0, gt=True),
    "dtype": Key("float32", "compute dtype", str, choices=DTYPES),
    "eval_batch_size": Key(1000, "evaluation batch size", int, min=1),
}
MODEL_PREFIX = "model."
# Keys whose value names this machine's file system: never shipped in a reference.
PATH_KEYS = ("data_dir",)


class ConfigError(ValueError):
    """A bad config; the message names the key."""


def _check_type(key: str, value: Any) -> Any:
    spec = KEYS[key]
    if spec.type is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if isinstance(value, bool) and spec.type is not bool:
        raise ConfigError(f"{key}: expected {_tname(spec.type)}, got {value!r}")
    if not isinstance(value, spec.type):
        raise ConfigError(f"{key}: expected {_tname(spec.type)}, got {value!r}")
    return value


def _tname(t: type | tuple[type, ...]) -> str:
    ts = t if isinstance(t, tuple) else (t,)
    return " or ".join("null" if x is type(None) else x.__name__ for x in ts)


def parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        try:
            value = yaml.safe_load(v)
        except yaml.YAMLError:
            raise ConfigError(f"{k}: cannot parse value {v!r}") from None
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e4 as a string; a number was meant
                value = float(value)
            except ValueError:
                pass
        out[k.strip()] = value
    return out


def load_file(path: str | os.PathLike) -> dict[str, Any]:
    from study import yamlfile

    try:
        with open(path) as f:
            data = yamlfile.load(f.read()) or {}
    except FileNotFoundError:
        raise ConfigError(f"--config: {path} not found") from None
    except yamlfile.DuplicateKeyError as e:
        raise ConfigError(f"--config: {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config: {path} is not valid YAML ({yamlfile.first_line(e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of keys")
    return data


def resolve(*layers: dict[str, Any], check_paths: bool = True) -> dict[str, Any]:
    """Defaults updated by each layer in turn, validated. Returns a plain dict.

    ``check_paths=False`` skips checks of the local file system (a grid for a cluster is
    expanded on a machine without its data).
    """
    cfg: dict[str, Any] = {k: v.default for k, v in KEYS.items()}
    model_kw: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key.startswith(MODEL_PREFIX):
                model_kw[key[len(MODEL_PREFIX):]] = value
            elif key == "model_overrides" and isinstance(value, dict):
                model_kw.update(value)
            elif key in KEYS:
                cfg[key] = _check_type(key, value)
            else:
                raise ConfigError(f"{key}: unknown key (study train --help lists them)")
    cfg["model_overrides"] = dict(sorted(model_kw.items()))
    validate(cfg, check_paths=check_paths)
    return cfg


def validate(cfg: dict[str, Any], check_paths: bool = True) -> None:
    """Each key against its own choices and bounds (``KEYS``), then the checks across keys."""
    from study import models

    for k, spec in KEYS.items():
        spec.check(k, cfg[k])
    if cfg["steps"] == 0 and cfg["epochs"] <= 0:
        raise ConfigError("epochs: must be > 0 when steps is 0")
    if cfg["steps"] == 0 and cfg["warmup_epochs"] > cfg["epochs"]:
        raise ConfigError(f"warmup_epochs: {cfg['warmup_epochs']} is longer than the training "
                          f"(epochs: {cfg['epochs']})")
    native, size = DATASET_NATIVE_SIZE.get(cfg["dataset"]), cfg["image_size"]
    if native and size and (size > native or native % size):
        raise ConfigError(f"image_size: {cfg['dataset']} is {native} px; a lower resolution must divide it "
                          f"(e.g. {native // 2}), got {size}")
    ra = cfg["randaugment"]
    if ra is not None and not (len(ra) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                   and v >= 0 for v in ra)):
        raise ConfigError(f"randaugment: expected [layers, magnitude] of integers >= 0, got {ra!r}")
    if cfg["mixup_cutmix"] and (cfg["batch_size"] % 2):
        raise ConfigError(f"batch_size: MixUp/CutMix needs an even batch, got {cfg['batch_size']}")
    if not all(isinstance(p, str) and p for p in cfg["agc_exclude"]):
        raise ConfigError(f"agc_exclude: expected a list of non-empty path patterns, got {cfg['agc_exclude']!r}")
    if cfg["batch_size"] % cfg["accum_steps"]:
        raise ConfigError(
            f"batch_size: {cfg['batch_size']} is not divisible by accum_steps {cfg['accum_steps']}"
        )
    if check_paths and cfg["data_dir"] is not None and not os.path.isdir(cfg["data_dir"]):
        raise ConfigError(f"data_dir: {cfg['data_dir']} is not a directory")
    try:
        models.resolve(cfg["model"], **cfg["model_overrides"])
    except ValueError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith("model:") else f"model.{msg}") from None


def train_size(cfg: dict[str, Any]) -> int:
    """The number of training examples ``cfg`` will see per epoch (from the dataset's name)."""
    return DATASET_TRAIN_SIZE[cfg["dataset"]] or cfg["synthetic_size"]


def help_text() -> str:
    lines = ["config keys (--set key=value; model knobs as model.<knob>=value):"]
    for k, spec in KEYS.items():
        allowed = f"; {spec.describe()}" if spec.describe() else ""
        lines.append(f"  {k:18} {spec.help} [default: {spec.default!r}{allowed}]")
    lines.append("  model.<knob>       any model knob, e.g. model.se_ratio=0 (study models; "
                 "study.models.valid_overrides)")
    return "\n".join(lines)
