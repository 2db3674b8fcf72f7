"""The SLURM backend: a grid's unfinished runs as submitit job arrays.

One array per grid, split into chunks of at most the cluster's ``MaxArraySize`` (submitit does
not split, facebookincubator/submitit#1624); ``array_parallelism`` throttles it. Each task
trains one run in-process and resumes from the run's own checkpoints after a requeue
(preemption, timeout or ``scontrol requeue``). The launch returns once submitted; ``study grid
status`` follows the runs through their ``result.json``. Profiles (``slurm/*.yaml``) hold the
partition and resources.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import submitit

from study.grids import launch
from study import yamlfile
from study.grids.grid import Grid

PROFILE_KEYS = {
    "partition": str, "nodes": int, "tasks_per_node": int, "gpus_per_node": int,
    "cpus_per_task": int, "mem_gb": (int, float), "timeout_min": int, "array_parallelism": int,
    "account": (str, type(None)), "qos": (str, type(None)), "constraint": (str, type(None)),
    "setup": list, "max_num_timeout": int, "signal_delay_s": int,
}
REQUIRED = ("partition", "timeout_min")


class ProfileError(ValueError):
    """A bad SLURM profile; the message names the file and key."""


def load_profile(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yamlfile.load(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"PROFILE: {path} not found (see slurm/*.yaml)") from None
    except yamlfile.DuplicateKeyError as e:
        raise ProfileError(f"{path}: {e}") from None
    except yamlfile.yaml.YAMLError as e:
        raise ProfileError(f"{path}: not valid YAML ({yamlfile.first_line(e)})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping of keys")
    for key, value in data.items():
        if key not in PROFILE_KEYS:
            raise ProfileError(f"{path}: {key}: unknown key; valid: {', '.join(sorted(PROFILE_KEYS))}")
        if not isinstance(value, PROFILE_KEYS[key]) or isinstance(value, bool):
            raise ProfileError(f"{path}: {key}: wrong type {type(value).__name__}")
        if isinstance(value, int) and value < 0:
            raise ProfileError(f"{path}: {key}: must be >= 0, got {value}")
    for key in REQUIRED:
        if key not in data:
            raise ProfileError(f"{path}: {key}: required")
    return data


def max_array_size() -> int:
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 1001
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else 1001


class TrainTask(submitit.helpers.Checkpointable):
    """One run; ``checkpoint()`` (from Checkpointable) resubmits it, and it resumes itself.

    On USR2 (preemption notice, or the time limit's, ``signal_delay_s`` before it) the trainer
    checkpoints at its step boundary, then hands over to submitit's handler, which requeues.
    With several tasks (``tasks_per_node`` × ``nodes``) each task is one JAX process.
    """

    def __call__(self, workdir: str, spec: str) -> dict:
        from study import config as config_lib
        from study.engine.train import train

        cfg = config_lib.resolve(config_lib.load_file(spec))
        return train(workdir, cfg, progress=False)


def submit(grid: Grid, root: str | Path, profile: dict[str, Any], log=print) -> list[str]:
    """Submits the unfinished runs; returns the SLURM job ids (one per array chunk)."""
    todo = [r for r in grid.runs if r.record(root).status() not in launch.FINISHED]
    if not todo:
        log(f"{grid.name}/{grid.scale}: all {len(grid.runs)} runs finished; nothing to submit")
        return []
    folder = Path(root) / grid.name / grid.scale / ".submitit"
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm",
                                     slurm_max_num_timeout=profile.get("max_num_timeout", 3))
    params = {k: profile[k] for k in ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task",
                                      "mem_gb", "timeout_min") if k in profile}
    slurm = {f"slurm_{k}": profile[k] for k in ("partition", "account", "qos", "constraint",
                                                 "array_parallelism", "setup", "signal_delay_s")
             if profile.get(k) is not None}
    executor.update_parameters(name=f"{grid.name}-{grid.scale}", **params, **slurm)
    dirs, specs = [], []
    for run in todo:
        specs.append(str(launch.write_spec(run, root)))
        dirs.append(str(run.directory(root)))
    chunk = max_array_size()
    ids = []
    for i in range(0, len(todo), chunk):
        jobs = executor.map_array(TrainTask(), dirs[i:i + chunk], specs[i:i + chunk])
        for job, run in zip(jobs, todo[i:i + chunk]):
            run.record(root).write_slurm_job(job.job_id)
        ids.append(jobs[0].job_id.split("_")[0])
    log(f"{grid.name}/{grid.scale}: submitted {len(todo)} runs as array job(s) {', '.join(ids)}")
    return ids


def _task_ids(array_id: str, tasks: str) -> list[str]:
    """``ArrayTaskId=0-3%2`` or ``1,4`` (a pending array not yet split) → ``["123_0", ...]``."""
    out = []
    for part in tasks.split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            out += [f"{array_id}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def job_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM's word on each job (array tasks as ``123_4``): pending (and why), running, how
    often it was requeued, and how it ended (state and exit code). ``scontrol`` knows live jobs
    and recently ended ones; ``sacct`` (where accounting is on) the older ones. Jobs neither
    knows are left out; without SLURM on this machine the result is empty."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    out: dict[str, str] = {}
    if not arrays:
        return out
    try:
        shown = subprocess.run(["scontrol", "-o", "show", "job", *arrays], capture_output=True,
                               text=True, timeout=30).stdout
        for line in shown.splitlines():
            f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            ids = _task_ids(f["ArrayJobId"], f.get("ArrayTaskId", "")) if "ArrayJobId" in f else [f.get("JobId", "")]
            state, reason = f.get("JobState", "").lower(), f.get("Reason", "None")
            text = state + (f" ({reason})" if reason != "None" else "")
            if state not in ("pending", "running", "completed"):
                text += f" exit {f.get('ExitCode', '?')}"
            if f.get("Restarts", "0") != "0":
                text += f", requeued {f['Restarts']}×"
            out.update({i: text for i in ids})
        acct = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(arrays), "-o", "JobID,State,ExitCode"],
                              capture_output=True, text=True, timeout=30)
        for line in acct.stdout.splitlines() if acct.returncode == 0 else []:
            jid, state, code = (line.split("|") + ["", ""])[:3]
            if jid and jid not in out and "[" not in jid:
                out[jid] = state.lower() + ("" if state == "COMPLETED" else f" exit {code}")
    except (OSError, subprocess.SubprocessError, KeyError):
        pass  # no SLURM client here: the run records alone tell the state
    return out
