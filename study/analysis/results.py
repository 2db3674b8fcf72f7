"""One results table per grid: one typed :class:`Row` per run, flattened into pandas.

Each run writes its own ``result.json`` atomically; the table is derived from the run records,
so concurrent runs never lose or corrupt a row. Its column names come from
(:mod:`study.analysis.columns`), and no module builds or parses a name itself. Columns:
``grid``, ``scale``, ``run_id``, ``label``, ``status``, ``dir``, the axes, every config key,
the result's scalar metrics, ``params`` and ``macs`` of the model, and the environment (device,
versions, commit). Values keep their types (a bool stays a bool); a list becomes its ``str``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from study import models
from study.analysis.columns import axis, cfg, knob
from study.grids.grid import Grid, Run


def _cell(v: Any) -> Any:
    return str(v) if isinstance(v, (list, tuple)) else v


@dataclasses.dataclass(frozen=True)
class Row:
    """One run as the results table sees it."""

    grid: str
    scale: str
    run_id: str
    label: str
    status: str
    dir: str
    varied: dict[str, Any]
    config: dict[str, Any]
    result: dict[str, Any]
    environment: dict[str, Any]
    params: int | None = None
    macs: float | None = None
    top1_tail_gain: float | None = None  # was it still learning at its end (RunRecord.top1_tail_gain)

    def flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {"grid": self.grid, "scale": self.scale, "run_id": self.run_id,
                               "label": self.label, "status": self.status, "dir": self.dir}
        out.update({axis(k): v for k, v in self.varied.items()})
        for k, v in self.config.items():
            if k == "model_overrides":
                out.update({knob(mk): _cell(mv) for mk, mv in v.items()})
            else:
                out[cfg(k)] = _cell(v)
        out.update({k: v for k, v in self.result.items()
                    if k != "status" and not isinstance(v, (dict, list))})
        env = self.environment
        if env:
            out.update({"device_kind": env.get("device_kind"), "cpu": env.get("cpu"),
                        "device_count": env.get("device_count"),
                        "jax": env.get("packages", {}).get("jax"),
                        "commit": env.get("git", {}).get("commit"), "dirty": env.get("git", {}).get("dirty")})
        if self.params is not None:
            out.update(params=self.params, macs=self.macs)
        if self.top1_tail_gain is not None:
            out["top1_tail_gain"] = self.top1_tail_gain
        return out


def row(run: Run, root: str | Path, *, count: bool = True) -> Row:
    """The run's row; ``count=False`` skips counting its model (a grid none of whose runs exist)."""
    rec = run.record(root)
    status = rec.status()
    result = rec.result() if rec.dir.exists() else {}
    params = macs = None
    if count:
        c = run.config
        s = models.structure(c["model"], c["image_size"] or None, **c["model_overrides"])
        params, macs = s.params, s.macs
    exists = rec.dir.exists()
    return Row(run.grid, run.scale, run.run_id, run.label, str(status), str(rec.dir), run.varied,
               run.config, result, rec.environment() if exists else {}, params, macs,
               rec.top1_tail_gain() if exists else None)


def table(grid: Grid, root: str | Path, *, count: bool = True) -> pd.DataFrame:
    return pd.DataFrame([row(r, root, count=count).flat() for r in grid.runs])


def write(grid: Grid, root: str | Path) -> tuple[pd.DataFrame, Path]:
    df = table(grid, root)
    out = Path(root) / grid.name / grid.scale
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "results.parquet", index=False)
    df.to_csv(out / "results.csv", index=False)
    return df, out
