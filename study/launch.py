"""Launching a grid's runs: only what is missing, resuming what is partial.

Backend ``local``: parallel ``study train`` subprocesses sized to the machine (cores, memory),
each pinned to its own share of the cores (XLA's Eigen and YNNPACK thread pools both size
themselves to the cores they may use) so concurrent runs do not fight over them; Ctrl-C sends SIGTERM to
every run (each checkpoints) and a relaunch resumes them; SIGTERM and SIGHUP to the launcher do
the same, and a launcher killed outright takes its runs down with it (``PR_SET_PDEATHSIG``), so
no run is left training unwatched. A run that dies of a signal (the OOM killer's SIGKILL, say)
is resumed from its last checkpoint up to ``retries`` times; what killed it goes into its
``result.json``. A run another launcher is training (its lock is held) is left to that launcher.
Each run gets its resolved config as ``spec.yaml`` in its own directory and writes its own
``result.json``.
"""

from __future__ import annotations

import ctypes
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
from study.status import BUSY_EXIT, FINISHED, Status, of_directory

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def status(run: Run, root: str | Path) -> Status:
    """The run's :class:`study.status.Status` (a dead ``running`` one reads ``interrupted``)."""
    return of_directory(run.directory(root))


def _child_setup(cpus: set[int] | None) -> None:
    """In the child before exec: die with the launcher (SIGTERM: checkpoint first), pin cores."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux
        pass
    if cpus:
        os.sched_setaffinity(0, cpus)


def signal_death(returncode: int) -> str | None:
    """'SIGKILL' for a child killed by SIGKILL (returncode -9), else None."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return None


def write_spec(run: Run, root: str | Path) -> Path:
    """The run's resolved config as ``spec.yaml`` in its directory (what the trainer reads)."""
    d = run.directory(root)
    d.mkdir(parents=True, exist_ok=True)
    spec = d / "spec.yaml"
    cfg = {k: v for k, v in run.config.items() if k != "model_overrides"}
    cfg.update({f"model.{k}": v for k, v in run.config["model_overrides"].items()})
    tmp = spec.with_name(f".spec.{os.getpid()}.tmp")  # two launchers may write it at once
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


def run_local(grid: Grid, root: str | Path, *, jobs: int | None = None, retries: int = 1,
              log=print) -> dict[str, Any]:
    """Trains the grid's unfinished runs; returns counts by outcome, ``failed_runs`` (ids) and
    ``interrupted``."""
    states = {r.run_id: status(r, root) for r in grid.runs}
    elsewhere = [r for r in grid.runs if states[r.run_id] == Status.RUNNING]
    todo = [r for r in grid.runs if states[r.run_id] not in FINISHED and r not in elsewhere]
    skipped = len(grid.runs) - len(todo) - len(elsewhere)
    if elsewhere:
        log(f"{grid.name}/{grid.scale}: {len(elsewhere)} run(s) are being trained by another "
            f"process: {', '.join(r.run_id for r in elsewhere)}")
    if not todo:
        log(f"{grid.name}/{grid.scale}: all {len(grid.runs)} runs finished or running; nothing to train")
        return {"trained": 0, "skipped": skipped, "failed_runs": [], "interrupted": False}
    jobs = jobs or parallelism(len(todo))
    log(f"{grid.name}/{grid.scale}: {len(todo)} to train ({skipped} finished), {jobs} at a time")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    slots = core_slots(jobs)
    free = list(range(jobs))
    if slots:
        env.setdefault("OMP_NUM_THREADS", str(len(slots[0])))
    queue, active, outcomes = list(todo), {}, {}
    tries: dict[str, int] = {}
    failed: list[str] = []
    interrupted = False

    def stop(signum, frame):
        nonlocal interrupted
        interrupted = True
        for p, *_ in active.values():
            p.send_signal(signal.SIGTERM)

    old = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
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
                cpus = slots[slot] if slots else None
                p = subprocess.Popen(
                    [sys.executable, "-m", "study.cli", "train", "--workdir", str(d),
                     "--config", str(spec)], stdout=out, stderr=subprocess.STDOUT, env=env,
                    preexec_fn=lambda cpus=cpus: _child_setup(cpus),
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
                st = _settle(run, root, p.returncode)
                if st == "busy":
                    log(f"  busy      {run.run_id}: another process took it; left to that one")
                    continue
                sig = signal_death(p.returncode)
                if sig and not interrupted and tries.get(run.run_id, 0) < retries:
                    tries[run.run_id] = tries.get(run.run_id, 0) + 1
                    ck = rundir.last_checkpoint(run.directory(root))
                    log(f"  retry     {run.run_id} died of {sig}; resuming from "
                        f"{'step ' + str(ck) if ck else 'the start'} "
                        f"(retry {tries[run.run_id]}/{retries})")
                    queue.insert(0, run)
                    continue
                if st == Status.FAILED:
                    failed.append(run.run_id)
                outcomes[st] = outcomes.get(st, 0) + 1
                log(f"  {st:9} {run.run_id} {run.label} {run.varied}")
            if interrupted and not active:
                break
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    wall = time.perf_counter() - t_start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    record = {"started": started, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
              "cores": _cores(), "cpu_utilisation": round(cpu / (wall * _cores()), 3),
              "jobs": jobs, "trained": len(todo), "skipped": skipped,
              "interrupted": interrupted, "outcomes": {str(k): v for k, v in outcomes.items()},
              "retries": tries, "failed_runs": failed}
    # One line per invocation (append-only) for the benchmarks' grid wall time.
    with (Path(root) / grid.name / grid.scale / "launches.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    log(f"{grid.name}/{grid.scale}: {len(todo)} runs in {wall / 60:.1f} min, "
        f"CPU utilisation {record['cpu_utilisation']:.0%} of {_cores()} cores")
    if interrupted:
        log("interrupted: runs checkpointed; relaunch to resume")
    return {"trained": len(todo), "skipped": skipped, **outcomes, "failed_runs": failed,
            "interrupted": interrupted}


def _settle(run: Run, root: str | Path, returncode: int) -> Status | str:
    """The run's state once its trainer exited; records a death the trainer could not."""
    if returncode == BUSY_EXIT:
        return "busy"
    st = status(run, root)
    if st in FINISHED or returncode == 0:
        return st
    d = run.directory(root)
    try:
        previous = rundir.read_json(d / "result.json")
    except (OSError, ValueError):
        previous = {}
    if previous.get("status") in (Status.FAILED, Status.INTERRUPTED) and "error" in previous:
        return Status(previous["status"])  # the trainer wrote why (an exception, a stop signal)
    sig = signal_death(returncode)
    rundir.write_json(d / "result.json", {
        "status": Status.FAILED, "returncode": returncode,
        "error": sig or f"exit status {returncode} (see train.log)",
        "steps": previous.get("steps"), "total_steps": previous.get("total_steps"),
        "last_checkpoint": rundir.last_checkpoint(d)})
    return Status.FAILED
