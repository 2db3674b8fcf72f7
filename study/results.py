"""One results table per grid: every run directory, flattened into pandas.

Each run writes its own ``result.json`` atomically; the table is derived from them, so
concurrent runs never lose or corrupt a row. Columns: ``run_id``, ``label``, the varied axes,
every config key (``cfg.<key>``, model knobs ``cfg.model.<knob>``), ``status``, the result's
metrics, params and MACs of the model, and the environment (device, versions, commit).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pandas as pd
from flax import nnx

from study import models, rundir
from study.grid import Grid
from study.launch import status


@functools.lru_cache(maxsize=64)
def _structure(model: str, overrides: tuple, resolution: int) -> tuple[int, float]:
    kw = dict(overrides)
    abstract = nnx.eval_shape(lambda: models.create(model, rngs=nnx.Rngs(0), **kw))
    return models.count_params(abstract), models.flops(model, resolution, **kw)


def table(grid: Grid, root: str | Path) -> pd.DataFrame:
    rows = []
    for run in grid.runs:
        d = run.directory(root)
        row: dict[str, Any] = {"grid": grid.name, "scale": grid.scale, "run_id": run.run_id,
                               "label": run.label, "status": str(status(run, root)), "dir": str(d)}
        row.update({f"axis.{k}": v for k, v in run.varied.items()})
        for k, v in run.config.items():
            if k == "model_overrides":
                row.update({f"cfg.model.{mk}": str(mv) if isinstance(mv, (list, tuple)) else mv
                            for mk, mv in v.items()})
            else:
                row[f"cfg.{k}"] = str(v) if isinstance(v, (list, tuple)) else v
        if (d / "result.json").exists():
            result = rundir.read_json(d / "result.json")
            for k, v in result.items():
                if k != "status" and not isinstance(v, (dict, list)):
                    row[k] = v
        if (d / "environment.json").exists():
            env = rundir.read_json(d / "environment.json")
            row.update({"device_kind": env.get("device_kind"), "device_count": env.get("device_count"),
                        "jax": env.get("packages", {}).get("jax"),
                        "commit": env.get("git", {}).get("commit"), "dirty": env.get("git", {}).get("dirty")})
        preset = models.PRESETS[run.config["model"]]
        res = run.config["image_size"] or preset.test_resolution
        overrides = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                 for k, v in run.config["model_overrides"].items()))
        row["params"], row["macs"] = _structure(run.config["model"], overrides, res)
        rows.append(row)
    return pd.DataFrame(rows)


def write(grid: Grid, root: str | Path) -> tuple[pd.DataFrame, Path]:
    df = table(grid, root)
    out = Path(root) / grid.name / grid.scale
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "results.parquet", index=False)
    df.to_csv(out / "results.csv", index=False)
    return df, out
