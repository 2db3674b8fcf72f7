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

from study import launch, yamlfile
from study.grid import Grid

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
        from study.train import train

        cfg = config_lib.resolve(config_lib.load_file(spec))
        return train(workdir, cfg, progress=False)


def submit(grid: Grid, root: str | Path, profile: dict[str, Any], log=print) -> list[str]:
    """Submits the unfinished runs; returns the SLURM job ids (one per array chunk)."""
    todo = [r for r in grid.runs if launch.status(r, root) not in launch.FINISHED]
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
        for job, d in zip(jobs, dirs[i:i + chunk]):
            (Path(d) / "slurm_job").write_text(job.job_id + "\n")
        ids.append(jobs[0].job_id.split("_")[0])
    log(f"{grid.name}/{grid.scale}: submitted {len(todo)} runs as array job(s) {', '.join(ids)}")
    return ids
