"""Wall time and CPU use of the local agc grid, read from the launcher's own record.

``study grid run`` (study/grids/launch.py) appends one JSON line per invocation to
``<runs>/<grid>/<scale>/launches.jsonl`` (wall_s, cpu_s, cpu_utilisation, cores, jobs,
trained, started). The grid takes ~18 minutes, longer than the whole benchmark, so the bench
reports the newest invocation that trained every run rather than rerunning it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
            **{k: r[k] for k in keys if k in r}}
