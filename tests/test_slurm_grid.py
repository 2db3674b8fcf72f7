"""A grid through the real local SLURM cluster, and a requeue drill (marker: slurm)."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.grids import grid, launch
from tests.test_slurm_cluster import slurm_cluster  # noqa: F401 - skips when the cluster is down

pytestmark = pytest.mark.slurm

GRID = """# Drill grid.
name: drill
base: {dataset: synthetic, synthetic_size: 256, batch_size: 16, log_every: 1, eval_batch_size: 64,
       checkpoint_every: 5, eval_every: 20}
blocks:
  - label: nf
    axes: {agc: [true, false]}
seeds: [0]
scales:
  smoke: {base: {steps: 3}}
  local: {base: {steps: 1500, checkpoint_every: 100, eval_every: 500, log_every: 50}}
"""


def cli(*args):
    r = subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def wait_done(g, root, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = [r.record(root).status() for r in g.runs]
        if all(s in launch.FINISHED for s in states):
            return
        time.sleep(2)
    raise AssertionError(f"runs not finished after {timeout} s: {states}")


def metrics(d):
    rows = [json.loads(l) for l in (Path(d) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows]


def test_grid_through_slurm_matches_local_backend(tmp_path):
    path = tmp_path / "drill.yaml"
    path.write_text(GRID)
    out = cli("grid", "run", str(path), "--scale", "smoke", "--backend", "slurm",
              "--profile", "slurm/local.yaml", "--runs-dir", str(tmp_path / "slurm"))
    assert "submitted 2 runs" in out  # returns once submitted
    g = grid.load(path, "smoke")
    wait_done(g, tmp_path / "slurm")
    # `grid status` adds SLURM's word on each submitted run (scontrol; no accounting here).
    status = cli("grid", "status", str(path), "--scale", "smoke", "--runs-dir", str(tmp_path / "slurm"))
    lines = status.splitlines()
    assert lines[1].rstrip().endswith("slurm"), status
    for r in g.runs:
        line = next(l for l in lines if l.startswith(r.run_id))
        job = (r.directory(tmp_path / "slurm") / "slurm_job").read_text().strip()
        assert f"{job} completed" in line, status
    cli("grid", "run", str(path), "--scale", "smoke", "--runs-dir", str(tmp_path / "local"))
    for r in g.runs:
        a = json.loads((r.directory(tmp_path / "slurm") / "result.json").read_text())
        b = json.loads((r.directory(tmp_path / "local") / "result.json").read_text())
        assert a["status"] == b["status"] == "done" and a["top1"] == b["top1"]
    again = cli("grid", "run", str(path), "--scale", "smoke", "--backend", "slurm",
                "--profile", "slurm/local.yaml", "--runs-dir", str(tmp_path / "slurm"))
    assert "nothing to submit" in again


def test_requeued_run_resumes_and_ends_as_an_uninterrupted_one(tmp_path):
    path = tmp_path / "drill.yaml"
    path.write_text(GRID.replace("axes: {agc: [true, false]}", "axes: {agc: [true]}"))
    g = grid.load(path, "local")
    run = g.runs[0]
    cli("grid", "run", str(path), "--scale", "local", "--backend", "slurm",
        "--profile", "slurm/local.yaml", "--runs-dir", str(tmp_path / "slurm"))
    d = run.directory(tmp_path / "slurm")
    job = (d / "slurm_job").read_text().strip()
    deadline = time.time() + 180
    while time.time() < deadline:  # wait for a checkpoint, then requeue mid-run
        ckpts = [p for p in (d / "checkpoints").glob("*") if p.name.isdigit()] if (d / "checkpoints").exists() else []
        if ckpts:
            break
        time.sleep(0.5)
    assert ckpts, "no checkpoint before the requeue"
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    wait_done(g, tmp_path / "slurm", timeout=300)
    info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert re.search(r"Restarts=1", info), info
    env = json.loads((d / "environment.json").read_text())
    assert env["resumed_from_step"] and env["resumed_from_step"] > 0
    cli("grid", "run", str(path), "--scale", "local", "--runs-dir", str(tmp_path / "local"))
    assert metrics(d) == metrics(run.directory(tmp_path / "local"))
