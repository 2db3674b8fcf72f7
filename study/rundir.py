"""What a run directory holds, written so a crash never leaves a half-written file.

``config.json`` (resolved config), ``environment.json`` (exact package versions, git commit and
dirty flag, device kind and count, host), ``metrics.jsonl`` (one JSON object per line),
``result.json`` (status, accuracies, steps, step time) and ``checkpoints/``.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "pandas",
            "submitit", "study")


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


def git_info(repo: Path | None = None) -> dict[str, Any]:
    repo = repo or Path(__file__).resolve().parent.parent
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {"commit": commit or None, "dirty": dirty if commit else None}


def environment() -> dict[str, Any]:
    import jax

    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            versions[p] = None
    devices = jax.devices()
    return {
        "packages": versions,
        "python": sys.version.split()[0],
        "git": git_info(),
        "device_kind": devices[0].device_kind,
        "platform": devices[0].platform,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "machine": platform.machine(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


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
            out.update(top1=row["top1"], top5=row["top5"], ema_top1=row["ema_top1"], eval_step=step)
    return out


class MetricsLog:
    """Append-only JSON lines; on resume, lines past the restored step are dropped.

    ``enabled=False`` (every process but the first of a multi-process run) writes nothing.
    """

    def __init__(self, path: Path, resume_step: int | None, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            keep = [l for l in path.read_text().splitlines() if l and json.loads(l)["step"] <= resume_step]
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text("".join(l + "\n" for l in keep))
            os.replace(tmp, path)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row, default=_jsonable) + "\n")
            f.flush()
