"""Launching a grid's runs: only what is missing, resuming what is partial.

Backend ``local``: parallel ``study train`` subprocesses sized to the machine (cores, memory),
each pinned to its own share of the cores (XLA's Eigen and YNNPACK thread pools both size
themselves to the cores they may use) so concurrent runs do not fight over them; Ctrl-C sends SIGTERM to
every run (each checkpoints) and a relaunch resumes them. Each run gets its resolved config as
``spec.yaml`` in its own directory and writes its own ``result.json``.
"""

from __future__ import annotations

import datetime
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from study import rundir
from study.grid import Grid, Run

FINISHED = ("done", "diverged")


def status(run: Run, root: str | Path) -> str:
    """done | diverged | failed | interrupted | running | pending | missing."""
    d = run.directory(root)
    if not d.exists():
        return "missing"
    result = d / "result.json"
    if not result.exists():
        return "pending"
    try:
        return str(rundir.read_json(result).get("status", "failed"))
    except (OSError, ValueError):
        return "failed"


def write_spec(run: Run, root: str | Path) -> Path:
    """The run's resolved config as ``spec.yaml`` in its directory (what the trainer reads)."""
    d = run.directory(root)
    d.mkdir(parents=True, exist_ok=True)
    spec = d / "spec.yaml"
    cfg = {k: v for k, v in run.config.items() if k != "model_overrides"}
    cfg.update({f"model.{k}": v for k, v in run.config["model_overrides"].items()})
    tmp = spec.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg, sort_keys=True))
    os.replace(tmp, spec)
    return spec


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def core_slots(jobs: int) -> list[set[int]] | None:
    """Disjoint core sets, one per concurrent run (None where affinity cannot be set)."""
    if jobs <= 1 or not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    per = max(1, len(cores) // jobs)
    return [set(cores[(i * per) % len(cores):(i * per) % len(cores) + per]) for i in range(jobs)]


def parallelism(runs: int, mem_per_run_gb: float = 3.0) -> int:
    cores = _cores()
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = 8.0
    return max(1, min(runs, cores, int(mem_gb // mem_per_run_gb)))


def run_local(grid: Grid, root: str | Path, *, jobs: int | None = None, log=print) -> dict[str, Any]:
    """Trains the grid's unfinished runs; returns counts by outcome."""
    todo = [r for r in grid.runs if status(r, root) not in FINISHED]
    skipped = len(grid.runs) - len(todo)
    if not todo:
        log(f"{grid.name}/{grid.scale}: all {len(grid.runs)} runs finished; nothing to train")
        return {"trained": 0, "skipped": skipped}
    jobs = jobs or parallelism(len(todo))
    log(f"{grid.name}/{grid.scale}: {len(todo)} to train ({skipped} finished), {jobs} at a time")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    slots = core_slots(jobs)
    free = list(range(jobs))
    if slots:
        env.setdefault("OMP_NUM_THREADS", str(len(slots[0])))
    queue, active, outcomes = list(todo), {}, {}
    interrupted = False

    def stop(signum, frame):
        nonlocal interrupted
        interrupted = True
        for p, *_ in active.values():
            p.send_signal(signal.SIGTERM)

    old = signal.signal(signal.SIGINT, stop)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    t_start = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        while queue or active:
            while queue and len(active) < jobs and not interrupted:
                run = queue.pop(0)
                spec = write_spec(run, root)
                d = run.directory(root)
                out = (d / "train.log").open("a")
                slot = free.pop(0)
                pin = (lambda cpus=slots[slot]: os.sched_setaffinity(0, cpus)) if slots else None
                p = subprocess.Popen(
                    [sys.executable, "-m", "study.cli", "train", "--workdir", str(d),
                     "--config", str(spec)], stdout=out, stderr=subprocess.STDOUT, env=env,
                    preexec_fn=pin,
                )
                active[p.pid] = (p, run, out, slot)
                log(f"  start {run.run_id} {run.label} {run.varied} seed={run.config['seed']}")
            time.sleep(0.2)
            for pid, (p, run, out, slot) in list(active.items()):
                if p.poll() is None:
                    continue
                out.close()
                del active[pid]
                free.append(slot)
                st = status(run, root)
                if p.returncode not in (0, 128 + signal.SIGTERM) and st not in FINISHED:
                    rundir.write_json(run.directory(root) / "result.json",
                                      {"status": "failed", "returncode": p.returncode})
                    st = "failed"
                outcomes[st] = outcomes.get(st, 0) + 1
                log(f"  {st:9} {run.run_id} {run.label} {run.varied}")
            if interrupted and not active:
                break
    finally:
        signal.signal(signal.SIGINT, old)
    wall = time.perf_counter() - t_start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    record = {"started": started, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
              "cores": _cores(), "cpu_utilisation": round(cpu / (wall * _cores()), 3),
              "jobs": jobs, "trained": len(todo), "skipped": skipped,
              "interrupted": interrupted, "outcomes": outcomes}
    # One line per invocation (append-only) for the benchmarks' grid wall time.
    with (Path(root) / grid.name / grid.scale / "launches.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    log(f"{grid.name}/{grid.scale}: {len(todo)} runs in {wall / 60:.1f} min, "
        f"CPU utilisation {record['cpu_utilisation']:.0%} of {_cores()} cores")
    if interrupted:
        log("interrupted: runs checkpointed; relaunch to resume")
    return {"trained": len(todo), "skipped": skipped, **outcomes}
