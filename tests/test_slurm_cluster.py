"""Checks against a real SLURM cluster, as brought up by `slurm/local-cluster.sh up`.

Skipped unless `sinfo` exists and `slurm/local-cluster.sh status` says the cluster is up.
"""

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

SCRIPT = Path(__file__).resolve().parents[1] / "slurm" / "local-cluster.sh"
TIMEOUT_S = 120  # per job; a requeued job waits ~20 s (cred_expire) before it may start again


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    if shutil.which("sinfo") is None:
        pytest.skip("no SLURM client (sinfo) on this machine")
    try:
        status = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.skip("SLURM cluster does not answer")
    if status.returncode != 0:
        pytest.skip("SLURM cluster is down; start it with `bash slurm/local-cluster.sh up`")


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout


def _job_states(job_id: str) -> list[str]:
    """JobState of every record of a job (one per array task); [] once it has left the queue."""
    out = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30
    ).stdout
    return re.findall(r"JobState=(\S+)", out)


def _wait_for(condition, what: str, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(1)


def _done(job_id: str, n: int) -> bool:
    states = _job_states(job_id)
    # Finished jobs stay visible for MinJobAge (600 s in local-cluster.sh's config).
    return len(states) == n and all(s not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING",
                                              "REQUEUED", "REQUEUE_HOLD") for s in states)


def test_max_array_size_is_readable():
    assert re.search(r"^MaxArraySize\s*=\s*\d+", _run("scontrol", "show", "config"), re.M)


def test_array_job_completes(tmp_path):
    job_id = _run(
        "sbatch", "--parsable", "--array=0-3", f"--chdir={tmp_path}",
        f"--output={tmp_path}/%A_%a.out", "--wrap", "echo task=$SLURM_ARRAY_TASK_ID",
    ).strip().split(";")[0]
    try:
        _wait_for(lambda: _done(job_id, 4), f"array job {job_id}")
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
    assert _job_states(job_id) == ["COMPLETED"] * 4
    for task in range(4):
        assert (tmp_path / f"{job_id}_{task}.out").read_text().strip() == f"task={task}"


def test_requeue_restarts_running_job(tmp_path):
    log = tmp_path / "restarts.log"
    script = tmp_path / "job.sh"
    # The first run records its restart count and then waits to be requeued; the rerun
    # records its count and finishes.
    script.write_text(
        "#!/bin/bash\n"
        f"echo ${{SLURM_RESTART_COUNT:-0}} >> {log}\n"
        '[ "${SLURM_RESTART_COUNT:-0}" -ge 1 ] || sleep 300\n'
    )
    job_id = _run(
        "sbatch", "--parsable", "--requeue", "--open-mode=append", f"--chdir={tmp_path}",
        f"--output={tmp_path}/job.out", str(script),
    ).strip()
    try:
        _wait_for(lambda: log.exists() and log.read_text().strip() == "0", f"job {job_id} to start")
        assert _job_states(job_id) == ["RUNNING"]
        _run("scontrol", "requeue", job_id)
        _wait_for(lambda: _done(job_id, 1), f"requeued job {job_id} to finish")
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
    assert _job_states(job_id) == ["COMPLETED"]
    assert log.read_text().split() == ["0", "1"]
    assert "Restarts=1" in _run("scontrol", "show", "job", job_id)
