"""What a grid's later run pays before its first step, measured directly.

The trainer runs one config twice, in fresh processes and with fresh caches, as two seeds of a
grid cell do: the first traces, exports (study.engine.trace_cache) and compiles; the second
should only load. Each reports ``compile_s`` (its first step's wall time) and ``step_time_ms``;
the cost is the first step less one ordinary step. Pinned to one core, as the launcher pins
each run of a grid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The agc grid's batch-1024 cell (ablations/agc.yaml), 3 steps.
LOCAL = {"model": "nf-resnet-nano", "dataset": "fashion_mnist", "image_size": 14, "batch_size": 1024,
         "agc_clipping": 0.08, "epochs": 16, "warmup_epochs": 2, "steps": 3, "log_every": 1,
         "eval_every": 1000, "checkpoint_every": 1000}


def _train(workdir: Path, sets: dict[str, Any], seed: int, cache: Path) -> dict[str, Any]:
    args = [sys.executable, "-m", "study.cli", "train", "--workdir", str(workdir)]
    for k, v in {**sets, "seed": seed}.items():
        args += ["--set", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
    cpu = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    t0 = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "STUDY_JAX_CACHE": str(cache)})
    # Pinned from here, not in a preexec_fn: a fork that runs Python in a multithreaded (JAX)
    # parent can deadlock. The child is still importing; its compute threads start later.
    if cpu is not None:
        os.sched_setaffinity(p.pid, {cpu})
    _, err = p.communicate(timeout=900)
    if p.returncode:
        raise RuntimeError(f"trainer failed: {err.strip().splitlines()[-1:]}")
    res = json.loads((workdir / "result.json").read_text())
    return {"process_s": time.perf_counter() - t0, "first_step_s": res["compile_s"],
            "step_s": res["step_time_ms"] / 1000,
            "reused_traces": err.count("reusing the traced")}


def measure(sets: dict[str, Any] = LOCAL) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="first-step-") as tmp:
        cache = Path(tmp) / "jax"
        cold, cached = (_train(Path(tmp) / f"seed{s}", sets, s, cache) for s in (0, 1))
    return {"config": sets, "cold": cold, "cached": cached,
            "first_step_s_cold": max(0.0, cold["first_step_s"] - cold["step_s"]),
            "first_step_s_cached": max(0.0, cached["first_step_s"] - cached["step_s"])}
