"""The run record: the one reader and writer of a run directory.

A run directory holds ``config.json`` (the resolved config), ``environment.json`` (exact package
versions, git commit and dirty flag, device kind and count, host), ``metrics.jsonl`` (one JSON
object per line, mirrored as TensorBoard event files in ``tensorboard/``), ``result.json``
(status, accuracies, steps, step time), ``checkpoints/``, the launcher's ``spec.yaml`` and
``train.log``, and the trainer's ``.lock`` (:mod:`study.runlock`). Every module reads and writes
runs through :class:`RunRecord`; every JSON write is atomic, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from study import runlock
from study.status import FINISHED, Status, complete, finished

TENSORBOARD = "tensorboard"  # event files beside metrics.jsonl
def write_json(path: Path, data: Any) -> None:
    """Atomic write: a reader sees the old file or the new one, never a partial one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def normalize(data: Any) -> Any:
    """``data`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(data, default=_jsonable))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def last_checkpoint(workdir: Path) -> int | None:
    """The newest committed checkpoint step of a run (orbax renames a step's dir on commit)."""
    d = Path(workdir) / "checkpoints"
    steps = [int(p.name) for p in d.iterdir() if p.name.isdigit()] if d.is_dir() else []
    return max(steps, default=None)


def last_rows(path: Path, step: int) -> dict[str, Any]:
    """The train metrics and the evaluation logged at ``step``, merged (for a resume at the end
    from a checkpoint that predates the metrics it now carries)."""
    out: dict[str, Any] = {}
    if not Path(path).exists():
        return out
    for line in Path(path).read_text().splitlines():
        row = json.loads(line) if line else {}
        if row.get("step") != step:
            continue
        if row.get("kind") == "train":
            out.update({k: v for k, v in row.items() if k not in ("step", "epoch", "kind", "images_per_s")})
        elif row.get("kind") == "eval":
            out.update({k: row[k] for k in ("top1", "top5", "ema_top1") if k in row}, eval_step=step)
    return out


class MetricsLog:
    """Append-only JSON lines, mirrored as TensorBoard scalars; on resume, rows past the
    restored step are dropped from both (TensorBoard's ``purge_step``).

    Each numeric field of a row becomes the scalar ``<kind>/<field>`` (``train/loss``,
    ``eval/top1``) in ``tensorboard/`` beside ``metrics.jsonl``, so ``tensorboard --logdir
    runs/<grid>/<scale>`` shows every run's curves. ``enabled=False`` (every process but the
    first of a multi-process run) writes nothing.
    """

    def __init__(self, path: Path, resume_step: int | None, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            keep = [l for l in path.read_text().splitlines() if l and json.loads(l)["step"] <= resume_step]
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(l + "\n" for l in keep))
            os.replace(tmp, path)
        from tensorboardX import SummaryWriter

        tb_dir = path.parent / TENSORBOARD
        if resume_step is None and tb_dir.exists():  # a fresh start: no stale curves
            for old in tb_dir.glob("events.out.tfevents.*"):
                old.unlink()
        # Event files are read in name order, and two writers in one second would share a name:
        # a nanosecond suffix keeps each attempt's file, in the order they were written.
        self._tb = SummaryWriter(str(tb_dir), purge_step=None if resume_step is None else resume_step + 1,
                                 flush_secs=3600, filename_suffix=f".{time.time_ns():020d}")

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row, default=_jsonable) + "\n")
            f.flush()
        kind = row.get("kind", "train")
        for k, v in row.items():
            if k not in ("step", "kind") and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._tb.add_scalar(f"{kind}/{k}", float(v), global_step=int(row["step"]))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class RunRecord:
    """One run directory: its files, its state, and the guard every kind of run starts with.

    ``writable=False`` (every process of a multi-process run but the first) reads as usual and
    writes nothing, so process 0 alone owns the directory.
    """

    def __init__(self, directory: str | Path, *, writable: bool = True) -> None:
        self.dir = Path(directory)
        self.writable = writable

    def __repr__(self) -> str:
        return f"RunRecord({str(self.dir)!r})"

    # --- files -------------------------------------------------------------------------------
    def _read(self, name: str) -> dict[str, Any] | None:
        path = self.dir / name
        return read_json(path) if path.exists() else None

    def _write(self, name: str, data: Any) -> None:
        if self.writable:
            write_json(self.dir / name, data)

    def config(self) -> dict[str, Any] | None:
        return self._read("config.json")

    def result(self) -> dict[str, Any]:
        """``result.json``, or ``{}`` when there is none yet (or it cannot be read: the status
        then says ``failed``)."""
        try:
            return self._read("result.json") or {}
        except (OSError, ValueError):
            return {}

    def environment(self) -> dict[str, Any]:
        return self._read("environment.json") or {}

    def write_config(self, cfg: dict[str, Any]) -> None:
        self._write("config.json", cfg)

    def write_environment(self, env: dict[str, Any]) -> None:
        self._write("environment.json", env)

    def write_result(self, result: dict[str, Any]) -> None:
        self._write("result.json", result)

    def write_spec(self, spec: dict[str, Any]) -> Path:
        """The launcher's ``spec.yaml`` (what the trainer reads); atomic, as two launchers may
        write it at once."""
        import yaml

        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "spec.yaml"
        tmp = path.with_name(f".spec.{os.getpid()}.tmp")
        tmp.write_text(yaml.safe_dump(spec, sort_keys=True))
        os.replace(tmp, path)
        return path

    @property
    def log_path(self) -> Path:
        """``train.log``: the trainer's output, appended to by every attempt."""
        return self.dir / "train.log"

    def result_mtime(self) -> float | None:
        path = self.dir / "result.json"
        return path.stat().st_mtime if path.exists() else None

    def write_signal(self, rows: list[dict[str, Any]]) -> None:
        """A ``task: signal`` run's per-block statistics (``signal.json``)."""
        self._write("signal.json", rows)

    def signal(self) -> list[dict[str, Any]]:
        """The per-block signal-propagation rows of a ``task: signal`` run ([] if none)."""
        return self._read("signal.json") or []

    def write_slurm_job(self, job_id: str) -> None:
        (self.dir / "slurm_job").write_text(job_id + "\n")

    def slurm_job(self) -> str | None:
        """The SLURM job id the run was submitted as, or None."""
        path = self.dir / "slurm_job"
        return path.read_text().strip() if path.exists() else None

    def metrics_log(self, resume_step: int | None) -> "MetricsLog":
        return MetricsLog(self.dir / "metrics.jsonl", resume_step, enabled=self.writable)

    def metrics(self) -> list[dict[str, Any]]:
        """The metric rows, the last one per (kind, step) (a resumed run may repeat steps)."""
        path = self.dir / "metrics.jsonl"
        rows: dict[tuple, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash
                rows.pop((row.get("kind"), row.get("step")), None)
                rows[(row.get("kind"), row.get("step"))] = row
        return list(rows.values())

    def top1_tail_gain(self) -> float | None:
        """How much test top-1 still rose at the end: the last evaluation's top-1 minus the top-1 at
        three quarters of the run (0.02 = up 2 pp). Test top-1, not the train loss: under a cosine
        decay to 0 the per-batch train loss keeps falling 1-3% over the last tenth of runs whose
        top-1 no longer moves. Where no evaluation falls at 3/4, top-1 there is interpolated
        linearly between the two around it: with one evaluation per epoch of a 3-epoch run the
        nearest is at 2/3, which would measure the last third instead. On a concave learning curve
        the interpolation overstates the gain, so it never hides a run still learning. None
        without an evaluation at or before 3/4 and one after it (a short or diverged run)."""
        evals = sorted((r["step"], r["top1"]) for r in self.metrics()
                       if r.get("kind") == "eval" and isinstance(r.get("top1"), (int, float)))
        if len(evals) < 2:
            return None
        last_step, last = evals[-1]
        at = 0.75 * last_step
        if evals[0][0] > at:
            return None
        (s0, t0), (s1, t1) = next((a, b) for a, b in zip(evals, evals[1:]) if b[0] >= at)
        return last - (t0 + (t1 - t0) * (at - s0) / (s1 - s0))

    def last_checkpoint(self) -> int | None:
        return last_checkpoint(self.dir)

    def last_rows(self, step: int) -> dict[str, Any]:
        return last_rows(self.dir / "metrics.jsonl", step)

    # --- state -------------------------------------------------------------------------------
    def status(self) -> Status:
        """The run's state; a ``running`` record whose lock is free belongs to a dead process
        and reads ``interrupted``, a ``done`` one without its final metrics ``incomplete``."""
        d = self.dir
        if not d.exists():
            return Status.MISSING
        if not (d / "result.json").exists():
            return Status.RUNNING if runlock.held(d) else Status.PENDING
        try:
            result = read_json(d / "result.json")
            st = Status(result.get("status", Status.FAILED))
        except (OSError, ValueError):
            return Status.FAILED
        if st == Status.RUNNING and not runlock.held(d):
            return Status.INTERRUPTED
        if st == Status.DONE and not complete(result):
            return Status.INCOMPLETE
        return st

    def finished(self) -> bool:
        return self.status() in FINISHED

    def begin(self, cfg: dict[str, Any]) -> dict[str, Any] | None:
        """The guard of every run (training and latency): refuses a directory that holds another
        config; returns the previous result when the run already finished, else None."""
        held = self.config()
        if held is not None and held != normalize(cfg):
            from study.config import ConfigError

            raise ConfigError(f"workdir: {self.dir} holds a run with a different config; use a new directory")
        previous = self.result()
        return previous if finished(previous) else None
