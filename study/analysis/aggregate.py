"""Seeds → one number per grid cell: mean ± std of top-1, diverged runs counted at chance.

The paper reports the mean of the best 4 of 5 seeds (App. D); a grid asks for it with
``aggregate: {best: 4}``. A diverged run is a result, not a gap: it scores its recorded top-1 if
it has one, else chance (1 / number of classes), and is drawn as a collapsed point. Runs that
have not finished (missing, pending, running, interrupted, failed) are counted, never averaged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from study.analysis.columns import cfg
from study.config import DATASET_CLASSES
from study.status import FINISHED  # the one owner of the status vocabulary



def column(df: pd.DataFrame, name: str, default: Any = np.nan) -> pd.Series:
    """``df[name]``, or a column of ``default`` when the table lacks it (a half-finished grid)."""
    if name in df.columns:
        return df[name]
    return pd.Series([default] * len(df), index=df.index, dtype=object if default is None else None)


def chance(df: pd.DataFrame) -> pd.Series:
    """Chance-level top-1 per run, from its dataset (synthetic data: its ``num_classes``)."""
    classes = column(df, cfg("dataset"), "").map(DATASET_CLASSES)
    classes = classes.fillna(pd.to_numeric(column(df, cfg("num_classes")), errors="coerce")).fillna(10)
    return 1.0 / classes.astype(float)


def with_score(df: pd.DataFrame) -> pd.DataFrame:
    """Adds ``score`` (top-1 of finished runs; chance for diverged ones without a top-1)."""
    df = df.copy()
    if df.empty:
        df["score"] = pd.Series(dtype=float)
        df["status"] = pd.Series(dtype=object)
        return df
    status = column(df, "status", "missing")
    top1 = pd.to_numeric(column(df, "top1"), errors="coerce")
    score = top1.where(status == "done")
    diverged = status == "diverged"
    score[diverged] = top1[diverged].fillna(chance(df)[diverged])
    df["score"] = score.astype(float)
    df["status"] = status
    return df


def summarize(df: pd.DataFrame, by: list[str], best: int | None = None) -> pd.DataFrame:
    """One row per cell of ``by``: n_runs, n_finished, n_diverged, mean, std, run_ids, missing.

    With ``best``, the mean and std are over the best ``best`` finished seeds when more have
    finished (the paper's best 4 of 5); with fewer, over all of them (``n_used`` says how many).
    """
    cols = ["n_runs", "n_finished", "n_diverged", "n_used", "mean", "std", "run_ids", "unfinished"]
    df = with_score(df)
    if df.empty:
        return pd.DataFrame(columns=[*by, *cols])
    for key in by:  # a key no run has (e.g. an axis of an unlaunched block) groups as NaN
        if key not in df.columns:
            df[key] = np.nan
        elif df[key].map(lambda v: isinstance(v, (list, tuple, dict))).any():
            df[key] = df[key].map(lambda v: str(list(v)) if isinstance(v, tuple) else str(v))
    rows = []
    for key, cell in df.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        done = cell[cell["status"].isin(FINISHED)].sort_values("score", ascending=False)
        used = done.head(best) if best else done
        rows.append({
            **dict(zip(by, key)),
            "n_runs": len(cell), "n_finished": len(done),
            "n_diverged": int((done["status"] == "diverged").sum()), "n_used": len(used),
            "mean": used["score"].mean() if len(used) else np.nan,
            "std": used["score"].std(ddof=0) if len(used) > 1 else np.nan,
            "run_ids": ",".join(used["run_id"].astype(str)),
            "unfinished": ",".join(f"{r}:{s}" for r, s in cell.loc[~cell["status"].isin(FINISHED),
                                                                   ["run_id", "status"]].values),
        })
    return pd.DataFrame(rows, columns=[*by, *cols])


def complete(row: pd.Series, best: int | None = None) -> bool:
    """Enough seeds finished to judge this cell: all planned, or at least ``best`` of them."""
    need = min(row["n_runs"], best) if best else row["n_runs"]
    return row["n_finished"] >= max(need, 1)


def fmt(row: pd.Series) -> str:
    """``0.712 ± 0.004 (n=4; 1 diverged) [ids]`` — the evidence string of one cell."""
    if not row["n_finished"]:
        return f"no finished run of {row['n_runs']}"
    text = f"{row['mean']:.3f}"
    if row["n_used"] > 1:
        text += f" ± {row['std']:.3f}"
    extra = f"n={row['n_used']}"
    if row["n_diverged"]:
        extra += f"; {row['n_diverged']} diverged"
    if row["n_finished"] < row["n_runs"]:
        extra += f"; {row['n_runs'] - row['n_finished']} unfinished"
    return f"{text} ({extra}) [{row['run_ids']}]"
