"""Config keys declare their type, choices and bounds; validation and --help come from them."""

import pytest

from study import config as config_lib


def test_help_lists_every_key_with_its_default_and_allowed_values():
    text = config_lib.help_text()
    for key, spec in config_lib.KEYS.items():
        line = next(l for l in text.splitlines() if l.strip().startswith(key + " "))
        assert repr(spec.default) in line
        if spec.describe():
            assert spec.describe() in line, line
    assert "fashion_mnist | cifar10 | imagenet | synthetic" in text and "in [0, 1)" in text


@pytest.mark.parametrize("key, value, message", [
    ("dataset", "mnist", "dataset: unknown 'mnist'; valid: fashion_mnist, cifar10, imagenet, synthetic"),
    ("dtype", "float16", "dtype: unknown 'float16'; valid: float32, bfloat16"),
    ("agc_granularity", "tensor", "agc_granularity: unknown 'tensor'; valid: unit, layer"),
    ("batch_size", 0, "batch_size: must be >= 1, got 0"),
    ("seed", -1, "seed: must be >= 0, got -1"),
    ("base_lr", 0.0, "base_lr: must be a finite number > 0, got 0.0"),
    ("base_lr", float("inf"), "base_lr: must be a finite number > 0, got inf"),
    ("weight_decay", -1e-5, "weight_decay: must be a finite number >= 0, got -1e-05"),
    ("ema_decay", 1.0, "ema_decay: must be in [0, 1), got 1.0"),
    ("label_smoothing", -0.1, "label_smoothing: must be in [0, 1), got -0.1"),
    ("batch_size", 2.5, "batch_size: expected int"),
    ("agc", "yes", "agc: expected true/false"),
])
def test_each_key_is_checked_against_its_own_declaration(key, value, message):
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.resolve({key: value})
    assert str(e.value).startswith(message), str(e.value)


def test_every_choice_list_is_declared_once():
    assert config_lib.KEYS["dataset"].choices == config_lib.DATASETS == tuple(config_lib.DATASET_CLASSES)
    assert config_lib.KEYS["dtype"].choices == config_lib.DTYPES
    from study.engine import agc

    with pytest.raises(ValueError, match="valid: unit, layer"):
        agc.adaptive_grad_clip(0.01, granularity="tensor")


def test_a_runs_own_config_json_loads_back_as_a_config_file(tmp_path):
    # JSON and Python write 2e-05 without a dot; YAML 1.1 (PyYAML) would read it as a string.
    import json

    cfg = config_lib.resolve({"weight_decay": 2e-05, "base_lr": 1e-3})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert config_lib.load_file(path)["weight_decay"] == 2e-05
    assert config_lib.resolve(config_lib.load_file(path)) == cfg
