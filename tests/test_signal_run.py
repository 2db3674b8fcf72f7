"""`task: signal` runs: signal propagation at initialisation as a grid run (ablations/signal.yaml)."""

import json
import subprocess
import sys

from study.engine.signal_run import profile_shape, summary
from study.record import RunRecord
from study.status import Status


def test_profile_shape_resets_and_growth():
    rows = [dict(stage=s, avg_var=v, avg_sq_mean=0.01, expected_var=e) for s, v, e in
            [(0, 1.1, 1.04), (0, 1.2, 1.08), (1, 1.05, 1.04), (1, 1.1, 1.08)]]
    assert profile_shape(rows) == {"resets_at_transitions": True, "grows_within_stages": True}
    flat = [dict(r) for r in rows]
    flat[1]["avg_var"] = 1.09
    assert profile_shape(flat) == {"resets_at_transitions": True, "grows_within_stages": False}
    s = summary(rows)
    assert s["signal_blocks"] == 4 and abs(s["signal_schedule_error_max"] - (1.2 / 1.08 - 1)) < 1e-12


def test_a_signal_run_writes_its_blocks_and_a_finished_result(tmp_path):
    cmd = [sys.executable, "-m", "study.cli", "train", "--workdir", str(tmp_path / "r"), "--set", "task=signal",
           "--set", "model=nf-resnet-nano", "--set", "dataset=synthetic", "--set", "batch_size=4",
           "--set", "image_size=28", "--set", "seed=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = RunRecord(tmp_path / "r")
    assert rec.status() == Status.DONE
    rows = rec.signal()
    assert len(rows) == 4 and all(row["avg_var"] > 0 for row in rows)  # nano: one block per stage
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["task"] == "signal" and result["signal_var_last"] == rows[-1]["avg_var"]
    # A finished run is not measured again.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads((tmp_path / "r" / "result.json").read_text()) == result
