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
from typing import Any, Callable

from study.grids.grid import Grid, Run
from study.grids.progress import GridProgress
from study.status import BUSY_EXIT, FINISHED, Status

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
    cfg = {k: v for k, v in run.config.items() if k != "model_overrides"}
    cfg.update({f"model.{k}": v for k, v in run.config["model_overrides"].items()})
    return run.record(root).write_spec(cfg)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def core_slots(jobs: int) -> list[set[int]] | None:
    """Disjoint core sets, one per concurrent run (None where affinity cannot be set)."""
    if jobs <= 1 or not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    per = max(1, len(cores) // jobs)
    return [set(cores[(i * per) % len(cores):(i * per) % len(cores) + per]) for i in range(jobs)]


# A run whose grid declares no ``mem_gb``: the local grids' nano models peak near 1 GiB.
DEFAULT_MEM_GB = 3.0


def available_gb(meminfo: Path = Path("/proc/meminfo")) -> float:
    """The memory free for new runs now, GiB: the kernel's MemAvailable, which counts the page
    cache it can drop (free pages alone read 16.6 of 22 GiB after a grid had read its data)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return 8.0


def parallelism(runs: int, mem_per_run_gb: float = DEFAULT_MEM_GB) -> int:
    """Runs at once: at most one per core, and as many as the available memory holds at
    ``mem_per_run_gb`` each (the smallest a grid declares; :class:`_Pool` admits each run by
    its own)."""
    return max(1, min(runs, _cores(), int(available_gb() // mem_per_run_gb)))


def mem(run: Run) -> float:
    """The run's declared peak memory, GiB (its block's or scale's ``mem_gb``)."""
    return run.mem_gb or DEFAULT_MEM_GB


def cost(run: Run) -> float:
    """The run's work, images × MACs per image (the cached count; else images × pixels): the
    launcher starts the longest first, so a grid ends on short runs and no core idles while one
    long run finishes. Never builds a model: JAX's threads must not start before trainers fork."""
    from study import config as config_lib
    from study.models import PRESETS
    from study.models.counts import cached

    c = run.config
    if c["task"] != "train":
        images = c["batch_size"] * (c["steps"] or 20)
    else:
        images = (c["steps"] * c["batch_size"]) if c["steps"] else c["epochs"] * config_lib.train_size(c)
    res = c["image_size"] or PRESETS[c["model"]].train_resolution
    counted = cached(c["model"], res, **c["model_overrides"])
    return float(images) * (counted.macs if counted else float(res * res))


def measured_on_disk(grid: Grid, root: str | Path) -> dict[str, float]:
    """Compile key → training seconds (steps × median step time) of a finished run of that shape
    from an earlier launch, so a resumed grid also orders its remaining seeds by what they took."""
    seconds: dict[str, float] = {}
    for r in grid.runs:
        rec = r.record(root)
        if rec.status() not in FINISHED:
            continue
        try:
            res = rec.result()
        except (OSError, ValueError):
            continue
        if res.get("steps") and res.get("step_time_ms"):
            seconds.setdefault(compile_key(r.config), res["steps"] * res["step_time_ms"] / 1000)
    return seconds


def _triage(grid: Grid, root: str | Path, log) -> tuple[list[Run], int]:
    """The runs to train (neither finished nor live elsewhere) and how many are finished."""
    states = {r.run_id: r.record(root).status() for r in grid.runs}
    elsewhere = [r for r in grid.runs if states[r.run_id] == Status.RUNNING]
    todo = [r for r in grid.runs if states[r.run_id] not in FINISHED and r not in elsewhere]
    if elsewhere:
        log(f"{grid.name}/{grid.scale}: {len(elsewhere)} run(s) are being trained by another "
            f"process: {', '.join(r.run_id for r in elsewhere)}")
    return order(todo), len(grid.runs) - len(todo) - len(elsewhere)


def compile_key(config: dict[str, Any]) -> str:
    """What a run's compiled steps depend on: its whole resolved config but the seed. λ, the
    learning rate (set by the batch size), AGC on or off and ``accum_steps`` are all constants
    of the traced step, so runs differing in any of them compile separately; seeds share one."""
    return json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True, default=str)


def order(todo: list[Run]) -> list[Run]:
    """Longest first, but the first run of every compiled shape before any second one: two runs
    that share a shape started together would both compile it cold (the cache is written when a
    compile ends), while one after the other the second loads it in seconds."""
    todo = sorted(todo, key=cost, reverse=True)  # a stable sort: ties keep the file's order
    seen: dict[tuple, int] = {}
    rank = []
    for r in todo:
        k = compile_key(r.config)
        rank.append(seen.get(k, 0))
        seen[k] = rank[-1] + 1
    return [r for _, r in sorted(zip(rank, todo), key=lambda p: p[0])]


def pick(queue: list[Run], started: set[str], measured: dict[str, float],
         fits: Callable[[Run], bool] = lambda run: True) -> int | None:
    """Which queued run starts next, as the grid goes: a shape not yet started first (in
    :func:`order`'s order), then a shape still in flight (its length is unknown), then the longest
    by its first run's measured wall seconds. The estimate of :func:`cost` cannot know that a BN
    step is slower than an NF one or that a run will diverge in a few steps; once a shape has run,
    its seeds are known, so the grid can end on the short ones and no core idles in a long tail.
    Only runs that ``fits`` (the memory left) are candidates; None when none is."""
    keys = {i: compile_key(r.config) for i, r in enumerate(queue) if fits(r)}
    for want in (lambda k: k not in started, lambda k: k not in measured):
        for i, k in keys.items():
            if want(k):
                return i
    return max(keys, key=lambda i: (measured[keys[i]], -i), default=None)


def _spawn(run: Run, root: str | Path, env: dict[str, str], cpus: set[int] | None):
    """``study train`` on the run's directory, its output appended to its train.log."""
    spec = write_spec(run, root)
    rec = run.record(root)
    out = rec.log_path.open("a")
    p = subprocess.Popen(
        [sys.executable, "-m", "study.cli", "train", "--workdir", str(rec.dir), "--config", str(spec)],
        stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=lambda: _child_setup(cpus))
    return p, out


def _record_launch(grid: Grid, root: str | Path, entry: dict[str, Any]) -> None:
    """One line per invocation (append-only) for the benchmarks' grid wall time."""
    with (Path(root) / grid.name / grid.scale / "launches.jsonl").open("a") as f:
        f.write(json.dumps(entry) + "\n")


class _Pool:
    """The launcher's running state: the queue, the live trainers, retries and outcomes."""

    def __init__(self, todo: list[Run], root: str | Path, jobs: int, retries: int, progress: GridProgress,
                 mem_budget_gb: float = float("inf")):
        self.queue, self.root, self.jobs, self.retries, self.progress = list(todo), root, jobs, retries, progress
        self.mem_budget_gb = mem_budget_gb  # the declared peaks of the runs in flight stay within it
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.slots = core_slots(jobs)
        if self.slots:
            self.env.setdefault("OMP_NUM_THREADS", str(len(self.slots[0])))
        self.free = list(range(jobs))
        self.active: dict[int, tuple] = {}
        self.started: set[str] = set()  # compile keys spawned in this launch
        self.measured: dict[str, float] = {}  # compile key → wall seconds of its first run
        self.tries: dict[str, int] = {}
        self.failed: list[str] = []
        self.outcomes: dict[str, int] = {}
        self.interrupted = False

    def stop(self, signum=None, frame=None) -> None:
        """Ctrl-C, SIGTERM or SIGHUP to the launcher: every run checkpoints and stops."""
        self.interrupted = True
        for p, *_ in self.active.values():
            p.send_signal(signal.SIGTERM)

    def fits(self, run: Run) -> bool:
        """Whether ``run``'s declared memory fits beside the runs in flight (alone, any run does:
        a grid must not stall on a run larger than the machine's free memory)."""
        used = sum(mem(r) for _, r, *_ in self.active.values())
        return not self.active or used + mem(run) <= self.mem_budget_gb

    def fill(self) -> None:
        while self.queue and len(self.active) < self.jobs and not self.interrupted:
            i = pick(self.queue, self.started, self.measured, self.fits)
            if i is None:
                return  # the next run waits for memory
            run = self.queue.pop(i)
            slot = self.free.pop(0)
            self.started.add(compile_key(run.config))
            fresh = run.record(self.root).last_checkpoint() is None  # a resumed run's time is partial
            p, out = _spawn(run, self.root, self.env, self.slots[slot] if self.slots else None)
            self.active[p.pid] = (p, run, out, slot, time.perf_counter(), fresh)
            self.progress.start()
            self.progress.say(f"  start {run.run_id} {run.label} {run.varied} seed={run.config['seed']}")

    def reap(self) -> None:
        for pid, (p, run, out, slot, t0, fresh) in list(self.active.items()):
            if p.poll() is None:
                continue
            out.close()
            del self.active[pid]
            self.free.append(slot)
            if self._ended(run, p.returncode) in FINISHED and fresh:
                self.measured.setdefault(compile_key(run.config), time.perf_counter() - t0)

    def _ended(self, run: Run, returncode: int) -> Status | str | None:
        say = self.progress.say
        st = _settle(run, self.root, returncode)
        if st == "busy":
            self.progress.end("busy elsewhere")
            say(f"  busy      {run.run_id}: another process took it; left to that one")
            return st
        sig = signal_death(returncode)
        if sig and not self.interrupted and self.tries.get(run.run_id, 0) < self.retries:
            self.tries[run.run_id] = self.tries.get(run.run_id, 0) + 1
            ck = run.record(self.root).last_checkpoint()
            self.progress.running -= 1  # it starts again
            say(f"  retry     {run.run_id} died of {sig}; resuming from "
                f"{'step ' + str(ck) if ck else 'the start'} (retry {self.tries[run.run_id]}/{self.retries})")
            self.queue.insert(0, run)
            return None
        if st == Status.FAILED:
            self.failed.append(run.run_id)
        self.outcomes[st] = self.outcomes.get(st, 0) + 1
        say(f"  {st:9} {run.run_id} {run.label} {run.varied}")
        self.progress.end(str(st))
        return st


def run_local(grid: Grid, root: str | Path, *, jobs: int | None = None, retries: int = 1,
              log=print) -> dict[str, Any]:
    """Trains the grid's unfinished runs; returns counts by outcome, ``failed_runs`` (ids) and
    ``interrupted``."""
    todo, skipped = _triage(grid, root, log)
    if not todo:
        log(f"{grid.name}/{grid.scale}: all {len(grid.runs)} runs finished or running; nothing to train")
        return {"trained": 0, "skipped": skipped, "failed_runs": [], "interrupted": False}
    budget = available_gb()
    jobs = jobs or parallelism(len(todo), min(mem(r) for r in todo))
    lo, hi = min(mem(r) for r in todo), max(mem(r) for r in todo)
    log(f"{grid.name}/{grid.scale}: {len(todo)} to train ({skipped} finished), up to {jobs} at a time"
        + (f" within {budget:.1f} GiB free ({lo:g}-{hi:g} GiB declared per run)" if lo != hi else ""))
    pool = _Pool(todo, root, jobs, retries, GridProgress(len(todo), f"{grid.name}/{grid.scale}", log), budget)
    pool.measured = measured_on_disk(grid, root)
    pool.started = set(pool.measured)
    old = {sig: signal.signal(sig, pool.stop) for sig in STOP_SIGNALS}
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    t_start = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        while pool.queue or pool.active:
            pool.fill()
            time.sleep(0.2)
            pool.reap()
            if pool.interrupted and not pool.active:
                break
    finally:
        pool.progress.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    wall = time.perf_counter() - t_start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    entry = {"started": started, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
             "cores": _cores(), "cpu_utilisation": round(cpu / (wall * _cores()), 3),
             "jobs": jobs, "trained": len(todo), "skipped": skipped, "interrupted": pool.interrupted,
             "outcomes": {str(k): v for k, v in pool.outcomes.items()}, "retries": pool.tries,
             "failed_runs": pool.failed}
    _record_launch(grid, root, entry)
    log(f"{grid.name}/{grid.scale}: {len(todo)} runs in {wall / 60:.1f} min, "
        f"CPU utilisation {entry['cpu_utilisation']:.0%} of {_cores()} cores")
    if pool.interrupted:
        log("interrupted: runs checkpointed; relaunch to resume")
    return {"trained": len(todo), "skipped": skipped, **pool.outcomes, "failed_runs": pool.failed,
            "interrupted": pool.interrupted}


def _settle(run: Run, root: str | Path, returncode: int) -> Status | str:
    """The run's state once its trainer exited; records a death the trainer could not."""
    if returncode == BUSY_EXIT:
        return "busy"
    rec = run.record(root)
    st = rec.status()
    if st in FINISHED or returncode == 0:
        return st
    try:
        previous = rec.result()
    except (OSError, ValueError):
        previous = {}
    if previous.get("status") in (Status.FAILED, Status.INTERRUPTED) and "error" in previous:
        return Status(previous["status"])  # the trainer wrote why (an exception, a stop signal)
    sig = signal_death(returncode)
    ck = rec.last_checkpoint()
    # The trainer rewrites result.json after each checkpoint; a death between the commit and that
    # write leaves an older step there, while the committed checkpoint proves its step was reached.
    done = [s for s in (previous.get("steps"), ck) if s is not None]
    rec.write_result({
        "status": Status.FAILED, "returncode": returncode,
        "error": sig or f"exit status {returncode} (see train.log)",
        "steps": max(done, default=None), "total_steps": previous.get("total_steps"),
        "last_checkpoint": ck})
    return Status.FAILED
