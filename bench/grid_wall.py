"""Wall time, CPU use and compile times of a local grid, read from the grid's own record.

``study grid run`` (study/grids/launch.py) appends one JSON line per invocation to
``<runs>/<grid>/<scale>/launches.jsonl`` (wall_s, cpu_s, cpu_utilisation, cores, jobs,
trained, started). The agc grid takes about an hour, longer than the whole benchmark, so the
bench reports the newest invocation that trained every run rather than rerunning it.

Compile times come from the same runs: each run's ``result.json`` has ``compile_s`` (its first
step's wall time) and ``step_time_ms``. A run is *cold* if it started before the first run of
its compiled shape had finished compiling, *cached* otherwise (it loaded the executable from
JAX's persistent cache). The cost a cached run pays before training is its first step minus
one ordinary step: tracing, the cache lookup and loading.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from study.grids.launch import compile_key

NOT_MEASURED = "not measured: run make ablation-agc"


def latest(runs_dir: str | Path = "runs", grid: str = "agc", scale: str = "local") -> dict[str, Any]:
    path = Path(runs_dir) / grid / scale / "launches.jsonl"
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    trained = [r for r in records if r.get("trained") and not r.get("interrupted")]
    if not trained:
        return {"grid": f"{grid}/{scale}", "status": NOT_MEASURED, "path": str(path)}
    r = trained[-1]
    keys = ("started", "wall_s", "cpu_s", "cpu_utilisation", "cores", "jobs", "trained", "skipped")
    return {"grid": f"{grid}/{scale}", "status": "measured", "path": str(path),
            **{k: r[k] for k in keys if k in r}, **compile_times(Path(runs_dir) / grid / scale)}


def compile_times(grid_dir: str | Path) -> dict[str, Any]:
    """Cold and cached compile seconds over a grid's finished runs (see the module docstring)."""
    runs = []
    for d in Path(grid_dir).iterdir() if Path(grid_dir).is_dir() else ():
        try:
            res = json.loads((d / "result.json").read_text())
            config = json.loads((d / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if not res.get("compile_s") or not res.get("step_time_ms"):
            continue
        start = (d / "config.json").stat().st_mtime  # written as the trainer starts
        runs.append((compile_key(config), start, res["compile_s"], res["step_time_ms"] / 1000))
    cold, cached = [], []
    for shape in {r[0] for r in runs}:
        same = sorted(r for r in runs if r[0] == shape)
        first_done = same[0][1] + same[0][2]
        for _, start, compile_s, step_s in same:
            (cached if start >= first_done else cold).append(max(0.0, compile_s - step_s))
    out: dict[str, Any] = {"compile_runs_cold": len(cold), "compile_runs_cached": len(cached)}
    if cold:
        out["compile_s_cold"] = statistics.median(cold)
    if cached:
        out["compile_s_cached"] = statistics.median(cached)
        out["compile_s_cached_max"] = max(cached)
    return out
