"""Seeds → one number per grid cell: the mean top-1 over seeds with its bootstrap interval,
diverged runs counted at chance.

Verdicts and error bars use every finished seed (:mod:`study.analysis.intervals`). The paper
reports the mean of the best 4 of 5 seeds (App. D); a grid asks for that too with
``aggregate: {best: 4}``, shown beside the mean as ``best_mean``. A diverged run is a result,
not a gap: it scores its recorded top-1 if
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

# A top-1 within this of chance did not train: a cell's mean (a reference that never learned) or
# one finished run's (a collapse: it ran every step without a NaN, yet ended predicting one class).
TRAINED = 0.05



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
    """One row per cell of ``by``: n_runs, n_finished, n_diverged, n_collapsed (finished runs
    within ``TRAINED`` of chance without diverging), n_used, mean, std, lo and hi
    (the 95% bootstrap interval of the mean, from 2 seeds on), best_mean (the mean of the best
    ``best`` seeds, the paper's protocol, when the grid asks for it), scores, run_ids, unfinished.
    """
    from study.analysis import intervals

    cols = ["n_runs", "n_finished", "n_diverged", "n_collapsed", "n_used", "mean", "std", "lo", "hi", "best_mean",
            "best_k", "scores", "run_ids", "unfinished"]
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
        scores = tuple(float(s) for s in done["score"])
        ci = intervals.mean(scores)
        rows.append({
            **dict(zip(by, key)),
            "n_runs": len(cell), "n_finished": len(done),
            "n_diverged": int((done["status"] == "diverged").sum()),
            "n_collapsed": int(((done["status"] == "done") & (done["score"] <= chance(done) + TRAINED)).sum()),
            "n_used": len(done),
            "mean": float(np.mean(scores)) if scores else np.nan,
            "std": float(np.std(scores)) if len(scores) > 1 else np.nan,
            "lo": ci.lo if ci else np.nan, "hi": ci.hi if ci else np.nan,
            "best_mean": float(np.mean(scores[:best])) if best and len(scores) > best else np.nan,
            "best_k": best if best and len(scores) > best else None,
            "scores": scores,
            "run_ids": ",".join(done["run_id"].astype(str)),
            "unfinished": ",".join(f"{r}:{s}" for r, s in cell.loc[~cell["status"].isin(FINISHED),
                                                                   ["run_id", "status"]].values),
        })
    return pd.DataFrame(rows, columns=[*by, *cols])


def complete(row: pd.Series, best: int | None = None) -> bool:
    """Enough seeds finished to judge this cell: all planned, or at least ``best`` of them."""
    need = min(row["n_runs"], best) if best else row["n_runs"]
    return row["n_finished"] >= max(need, 1)


def fmt(row: pd.Series) -> str:
    """``0.712 [0.704, 0.720] (n=5; best 4 of 5: 0.716; 1 diverged) [ids]``: the evidence of a cell."""
    if not row["n_finished"]:
        return f"no finished run of {row['n_runs']}"
    text = f"{row['mean']:.3f}"
    if np.isfinite(row.get("lo", np.nan)):
        text += f" [{row['lo']:.3f}, {row['hi']:.3f}]"
    extra = f"n={row['n_used']}"
    if np.isfinite(row.get("best_mean", np.nan)):
        extra += f"; best {int(row['best_k'])} of {row['n_used']}: {row['best_mean']:.3f}"
    if row["n_diverged"]:
        extra += f"; {row['n_diverged']} diverged"
    if row.get("n_collapsed", 0):
        extra += f"; {row['n_collapsed']} collapsed to chance"
    if row["n_finished"] < row["n_runs"]:
        extra += f"; {row['n_runs'] - row['n_finished']} unfinished"
    return f"{text} ({extra}) [{row['run_ids']}]"
