import json
import subprocess
import sys

import pytest

from study.engine import latency


def test_latency_protocol_reports_compile_separately():
    out = latency.measure("nf-resnet-nano", batch=16, steps=5, warmup=1)
    assert out["resolution"] == 28 and out["batch"] == 16
    assert out["median_step_ms"] > 0 and out["compile_s"] > 0
    # Compilation dominates the first call; the steady-state median excludes it.
    assert out["compile_s"] * 1000 > out["median_step_ms"]
    assert abs(out["images_per_s"] - 16 / (out["median_step_ms"] / 1000)) < 1e-6 * out["images_per_s"]
    assert out["device_kind"]


def test_latency_cli_one_line_error_for_unknown_model():
    r = subprocess.run([sys.executable, "-m", "study.cli", "latency", "nfnet-f99"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "study.cli", "latency", "resnet-nano", "--batch", "8",
                        "--steps", "3"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["model"] == "resnet-nano"


def test_latency_task_writes_a_run_directory_and_is_idempotent(tmp_path):
    """``task: latency`` (the variants grid) leaves the same run files as a training run."""
    from study import config as config_lib
    from study.engine.train import train

    cfg = config_lib.resolve({"task": "latency", "model": "nf-resnet-nano", "batch_size": 4,
                              "steps": 3})
    out = train(tmp_path / "run", cfg)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result == json.loads(json.dumps(out))
    assert result["status"] == "done" and result["task"] == "latency"
    assert result["latency_ms"] > 0 and result["batch"] == 4 and result["resolution"] == 28
    assert result["steps"] == 3 and result["compile_s"] > 0
    assert json.loads((tmp_path / "run" / "environment.json").read_text())["device_kind"]
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained
    again = train(tmp_path / "run", cfg)  # a finished latency run is not measured again
    assert again["latency_ms"] == result["latency_ms"]
    other = config_lib.resolve({"task": "latency", "model": "nf-resnet-nano", "batch_size": 8})
    with pytest.raises(config_lib.ConfigError, match="workdir"):
        train(tmp_path / "run", other)
