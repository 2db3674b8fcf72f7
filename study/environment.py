"""What a run records about where it ran: exact package versions, git commit and dirty flag,
device kind and count, processes, host, CPU model and vector ISA, CPU affinity, XLA flags
(``environment.json``)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

def peak_rss_gb() -> float | None:
    """This process's peak resident memory so far, GiB (Linux's ``ru_maxrss`` is in KiB): what a
    grid file's ``mem_gb`` should declare for a run like it."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / 2**20, 2) if sys.platform != "darwin" else round(kib / 2**30, 2)


PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "pandas",
            "submitit", "study")


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


# Widest first: XLA's CPU backend compiles for the host's vector ISA, so two CPUs that differ
# here can round differently and a rerun need not match a reference to the last bit.
ISA_LEVELS = ("avx512f", "avx2", "avx", "sse4_2", "asimd", "neon")


def cpu(cpuinfo: str | None = None) -> str:
    """The CPU as a rerun's provenance needs it: model name, family/model and the widest vector
    ISA, e.g. ``AMD EPYC (family 25 model 17, avx512f)``, from ``cpuinfo`` (default: this
    machine's /proc/cpuinfo; ``platform.processor()`` where there is none)."""
    try:
        text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())  # the first processor's
    name = info.get("model name") or info.get("Hardware") or info.get("CPU implementer", platform.machine())
    flags = set((info.get("flags") or info.get("Features") or "").split())
    isa = next((f for f in ISA_LEVELS if f in flags), "")
    ident = [f"family {info['cpu family']} model {info['model']}"] if "cpu family" in info and "model" in info else []
    extra = ", ".join(ident + ([isa] if isa else []))
    return f"{name} ({extra})" if extra else name


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
        "cpu": cpu(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "machine": platform.machine(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
