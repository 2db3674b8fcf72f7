import json
import subprocess
import sys

from study import latency


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
