"""SLURM drills on the real local cluster: 2-process data parallel, requeue, USR2 and the time
limit, each ending as an uninterrupted run did (markers: slurm, slow; CI's `make test-slow`)."""

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from study.grids import grid
from tests.test_slurm_cluster import slurm_cluster  # noqa: F401 - skips when the cluster is down
from tests.test_slurm_grid import cli, metrics, wait_done

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

GRID = """name: drills
base: {{dataset: synthetic, synthetic_size: 512, batch_size: 32, log_every: 10, eval_every: 100,
       checkpoint_every: 20, eval_batch_size: 128, steps: {steps}}}
blocks:
  - label: nf
seeds: [0]
scales:
  smoke: {{}}
"""
PROFILE = """partition: debug
nodes: 1
tasks_per_node: {tasks}
cpus_per_task: 1
mem_gb: 4
timeout_min: {timeout}
signal_delay_s: {delay}
max_num_timeout: 5
"""
SETS = ["dataset=synthetic", "synthetic_size=512", "batch_size=32", "log_every=1", "eval_every=10",
        "checkpoint_every=5", "steps=24", "eval_batch_size=128"]


# Across process counts only the summation order changes: losses agree to rtol, while counts of
# threshold crossings (a unit clipped or not, an argmax) may flip by one, and the gradient norm
# follows such a flip at ~1e-4 by step 24.
CONTINUOUS = ("loss", "lr", "step", "epoch")  # the criterion: the losses


def close(a, b, rtol):
    """Same rows; with rtol 0 bit-identical, else the continuous metrics equal to ``rtol``."""
    assert [(r["step"], r["kind"]) for r in a] == [(r["step"], r["kind"]) for r in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if rtol and k not in CONTINUOUS:
                continue
            if isinstance(x[k], float):
                np.testing.assert_allclose(y[k], x[k], rtol=rtol, err_msg=f"step {x['step']} {k}")
            else:
                assert x[k] == y[k], (x["step"], k)


def setup(tmp_path, steps, tasks=1, timeout=60, delay=90, checkpoint_every=20):
    path = tmp_path / "drills.yaml"
    path.write_text(GRID.format(steps=steps).replace("checkpoint_every: 20",
                                                     f"checkpoint_every: {checkpoint_every}"))
    prof = tmp_path / "profile.yaml"
    prof.write_text(PROFILE.format(tasks=tasks, timeout=timeout, delay=delay))
    g = grid.load(path, "smoke")
    return path, prof, g, g.runs[0]


def submit(path, prof, root):
    cli("grid", "run", str(path), "--scale", "smoke", "--backend", "slurm", "--profile", str(prof),
        "--runs-dir", str(root))


def job_of(d):
    return (Path(d) / "slurm_job").read_text().strip()


def wait_checkpoint(d, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(p.name.isdigit() for p in (Path(d) / "checkpoints").glob("*")):
            return
        time.sleep(0.5)
    raise AssertionError("no checkpoint")


def restarts(job):
    info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return int(re.search(r"Restarts=(\d+)", info).group(1))


def uninterrupted(path, tmp_path):
    cli("grid", "run", str(path), "--scale", "smoke", "--runs-dir", str(tmp_path / "local"))
    return grid.load(path, "smoke").runs[0].directory(tmp_path / "local")


def test_srun_two_tasks_match_one_process(tmp_path):
    args = [sys.executable, "-m", "study.cli", "train"]
    for s in SETS:
        args += ["--set", s]
    one = subprocess.run(args + ["--workdir", str(tmp_path / "one")], capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(["srun", "--ntasks", "2", "--cpus-per-task", "1", *args,
                          "--workdir", str(tmp_path / "two")], capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    env = json.loads((tmp_path / "two" / "environment.json").read_text())
    assert env["process_count"] == 2 and env["device_count"] == 2
    close(metrics(tmp_path / "one"), metrics(tmp_path / "two"), rtol=1e-4)


def interrupted_once(tmp_path, command, **kw):
    """Submits the drill grid, runs ``command + [job]`` after the first checkpoint, waits for
    the end and checks the job restarted once. Returns (grid file, profile, grid, run dir)."""
    path, prof, g, run = setup(tmp_path, **kw)
    submit(path, prof, tmp_path / "slurm")
    d = run.directory(tmp_path / "slurm")
    wait_checkpoint(d)
    subprocess.run([*command, job_of(d)], check=True, timeout=30)
    wait_done(g, tmp_path / "slurm", timeout=600)
    assert restarts(job_of(d)) == 1
    return path, prof, g, d


def test_two_task_job_requeued_mid_run_resumes_and_matches(tmp_path):
    path, prof, g, d = interrupted_once(tmp_path, ["scontrol", "requeue"], steps=300, tasks=2)
    env = json.loads((d / "environment.json").read_text())
    assert env["process_count"] == 2 and env["resumed_from_step"] > 0
    # Against an uninterrupted 2-task run, bit for bit (300 steps of training amplify the
    # 1-vs-2-process summation order past 1e-4; test_srun_two_tasks_match_one_process has that).
    submit(path, prof, tmp_path / "again")
    wait_done(g, tmp_path / "again", timeout=600)
    close(metrics(g.runs[0].directory(tmp_path / "again")), metrics(d), rtol=0)


def test_usr2_checkpoints_at_its_step_requeues_and_resumes_identically(tmp_path):
    path, prof, g, d = interrupted_once(tmp_path, ["scancel", "--signal=USR2"], steps=600)
    log = "\n".join(p.read_text() for p in (tmp_path / "slurm").rglob("*_log.err"))
    assert "SIGUSR2: checkpointed at step" in log and "this job is preempted" in log
    assert g.runs[0].record(tmp_path / "slurm").status() == "done"
    close(metrics(uninterrupted(path, tmp_path)), metrics(d), rtol=0)


def steps_for(seconds: float, tmp_path) -> int:
    """How many of the drill's steps take ``seconds`` on one core of this machine, measured by a
    short run of the same config (so a faster machine, or a warm compile cache, cannot finish
    the run inside its first time window and skip the drill)."""
    sets = [s for s in SETS if not s.startswith(("steps=", "log_every=", "eval_every=", "checkpoint_every="))]
    sets = [*sets, "steps=300", "log_every=10", "eval_every=100", "checkpoint_every=100"]  # as the drill
    args = ["taskset", "-c", "0", sys.executable, "-m", "study.cli", "train", "--workdir", str(tmp_path / "calibrate")]
    r = subprocess.run([*args, *(x for s in sets for x in ("--set", s))], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    step_ms = json.loads((tmp_path / "calibrate" / "result.json").read_text())["step_time_ms"]
    return int(math.ceil(seconds * 1000 / step_ms / 100) * 100)


def test_time_limit_checkpoints_requeues_and_resumes_identically(tmp_path):
    # A 2-minute limit with USR2 60 s before it (slurmctld checks every 30 s): each attempt trains
    # for under a minute. The run is sized to 130 s of training on this machine (measured first),
    # so it needs 3 attempts, at least 2 if the machine runs twice as fast during the drill, and
    # at most 6 (the profile allows 5 timeouts) if it runs twice as slow.
    steps = steps_for(130, tmp_path)
    path, prof, g, run = setup(tmp_path, steps=steps, timeout=2, delay=60, checkpoint_every=100)
    submit(path, prof, tmp_path / "slurm")
    d = run.directory(tmp_path / "slurm")
    wait_done(g, tmp_path / "slurm", timeout=900)
    assert restarts(job_of(d)) >= 1
    log = "\n".join(p.read_text() for p in (tmp_path / "slurm").rglob("*_log.err"))
    assert "this job is timed-out" in log and "SIGUSR2: checkpointed at step" in log
    close(metrics(uninterrupted(path, tmp_path)), metrics(d), rtol=0)
