"""The shipped reference (``reports/<scale>/``) and a rerun's comparison with it.

``study report --ship`` writes a report into ``reports/<scale>/`` and, beside it, per grid
``<grid>/results.csv`` (the results table without the machine's paths: :data:`KEEP` columns, the
axes, every config key but :data:`study.config.PATH_KEYS` and a task's own scalars) and ``grids.json`` (the grids in report order, with the axes that define their cells). Nothing of
a run directory is copied, so no checkpoint can ship. A later ``study report`` reads the
reference back and compares every cell (the block label and the grid's axes, seeds pooled by
:func:`study.analysis.aggregate.summarize`, as the report's accuracy rows group them) at the
printed digit: on the same XLA path the runs are deterministic and a rerun prints the same
numbers; where it does not, ``reference.csv`` says which cells moved, by how much, and whether
the rerun's mean stays inside the reference's 95% interval.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from study.analysis.aggregate import column, summarize
from study.analysis.columns import axis, cfg
from study.config import PATH_KEYS
from study.status import Status

DIGITS = 4  # the digit a top-1 is printed to (README, `study grid status`)
SAME, INSIDE, OUTSIDE = "same", "moved, inside interval", "moved, outside interval"
NO_INTERVAL = "moved, no interval (1 seed)"  # one reference seed has no interval to be inside
MISSING, NEW = "missing in rerun", "new in rerun"
MOVED = (INSIDE, OUTSIDE, NO_INTERVAL)
COLUMNS = ["grid", "cell", "ref_mean", "ref_lo", "ref_hi", "ref_n", "rerun_mean", "rerun_lo", "rerun_hi",
           "rerun_n", "delta", "status", "ref_run_ids", "rerun_run_ids"]
MANIFEST = "grids.json"
# What a shipped results.csv keeps besides the axes: identity, outcome, timing and provenance;
# never ``dir``, ``host``, an ``error`` text or a checkpoint path (they name this machine).
KEEP = ["grid", "scale", "run_id", "label", "status", cfg("seed"), cfg("model"), cfg("dataset"),
        cfg("num_classes"), cfg("task"), cfg("batch_size"), "top1", "top5", "ema_top1", "final_loss",
        "steps", "step_time_ms", "compile_s", "top1_tail_gain", "wall_s", "latency_ms", "images_per_s",
        "batch", "resolution", "dtype", "params", "macs", "device_kind", "cpu", "device_count", "jax", "commit",
        "dirty"]
DROP = {"pid"}  # a number, but of a process on this machine
# What identifies a run in a grid; the rest of a shipped row is its outcome (:func:`carry`).
IDENTITY = ("grid", "scale", "run_id", "label")


class GridLike(Protocol):
    """What the comparison needs of a grid (``study.analysis.report.GridResults``)."""

    table: pd.DataFrame
    axes: list[str]
    best: int | None


def cell_columns(axes: list[str]) -> list[str]:
    """The columns that make a cell: the block label and the grid's axes (seeds are pooled)."""
    return ["label", *(axis(a) for a in axes if a != "seed")]


def trains(table: pd.DataFrame) -> bool:
    """Whether the grid has training runs (a latency grid's timings are no top-1 to compare)."""
    return not table.empty and (column(table, cfg("task"), "train").fillna("train") == "train").any()


def cell_text(v: Any) -> str:
    """A cell value as text that survives a CSV round trip (256 and 256.0, True and 'True')."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, float, np.integer, np.floating)):
        return str(int(v)) if float(v).is_integer() else f"{float(v):.10g}"
    return str(v)


def cells(table: pd.DataFrame, axes: list[str], best: int | None = None) -> pd.DataFrame:
    """One row per cell (``summarize``'s columns) plus ``cell``, its text ("label k=v ...")."""
    by = cell_columns(axes)
    df = table.copy()
    for col in by:  # a column the table lacks (an axis of an unlaunched block) groups as empty
        df[col] = df[col].map(cell_text) if col in df.columns else ""
    s = summarize(df, by, best)
    names = [a for a in axes if a != "seed"]
    s["cell"] = [" ".join([r["label"], *(f"{a}={r[axis(a)]}" for a in names if r[axis(a)] != "")])
                 for _, r in s.iterrows()]
    return s


def read_results(ref_dir: str | Path, grid: str) -> pd.DataFrame:
    """A grid's shipped results table (empty when the reference has none)."""
    path = Path(ref_dir) / grid / "results.csv"
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    return pd.read_csv(path, keep_default_na=True)


def manifest(ref_dir: str | Path) -> dict[str, Any]:
    """``grids.json`` of a reference ({} when absent)."""
    path = Path(ref_dir) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def _printed(v: float) -> str:
    return f"{v:.{DIGITS}f}"


def _status(ref: pd.Series | None, new: pd.Series | None) -> tuple[str | None, float | None]:
    """(status, Δ at the printed digit) of one cell; (None, None) when neither side finished."""
    had = ref is not None and ref["n_finished"] > 0
    has = new is not None and new["n_finished"] > 0
    if not had and not has:
        return None, None
    if not has:
        return MISSING, None
    if not had:
        return NEW, None
    a, b = _printed(ref["mean"]), _printed(new["mean"])
    delta = round(float(b) - float(a), DIGITS)
    if a == b:
        return SAME, 0.0
    if not (np.isfinite(ref["lo"]) and np.isfinite(ref["hi"])):
        return NO_INTERVAL, delta
    return (INSIDE if ref["lo"] <= new["mean"] <= ref["hi"] else OUTSIDE), delta


def _side(s: pd.Series | None, prefix: str) -> dict[str, Any]:
    """One side's columns of a comparison row (empty where it has no finished run)."""
    ok = s is not None and s["n_finished"] > 0
    get = (lambda k: s[k]) if ok else (lambda k: np.nan)
    return {f"{prefix}_mean": get("mean"), f"{prefix}_lo": get("lo"), f"{prefix}_hi": get("hi"),
            f"{prefix}_n": int(s["n_finished"]) if ok else 0, f"{prefix}_run_ids": s["run_ids"] if ok else ""}


def compare(grids: Mapping[str, GridLike], ref_dir: str | Path) -> pd.DataFrame:
    """Every cell of the rerun's training grids against the reference's (:data:`COLUMNS`)."""
    rows = []
    for name, g in grids.items():
        ref_table = read_results(ref_dir, name)
        if not (trains(g.table) or trains(ref_table)):
            continue
        new = cells(g.table, g.axes, g.best).set_index("cell") if trains(g.table) else pd.DataFrame()
        ref = cells(ref_table, g.axes, g.best).set_index("cell") if trains(ref_table) else pd.DataFrame()
        for key in list(ref.index) + [k for k in new.index if k not in ref.index]:
            r = ref.loc[key] if key in ref.index else None
            n = new.loc[key] if key in new.index else None
            status, delta = _status(r, n)
            if status is not None:
                rows.append({"grid": name, "cell": key, **_side(r, "ref"), **_side(n, "rerun"),
                             "delta": delta, "status": status})
    df = pd.DataFrame(rows, columns=COLUMNS)
    values = [c for c in COLUMNS if c.endswith(("_mean", "_lo", "_hi"))]
    df[values] = df[values].astype(float).round(8)  # the CSV without float noise (0.6239999…)
    return df


def summary(df: pd.DataFrame, ref_dir: str | Path, scale: str | None = None) -> str:
    """One line: how many cells are the same to the printed digit, and what moved."""
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    moved = sum(counts.get(s, 0) for s in MOVED)
    text = (f"{counts.get(SAME, 0)} of {len(df)} cells the same as the reference ({ref_dir}) to the printed "
            f"digit ({DIGITS} decimals); {moved} moved")
    if moved:
        text += " (" + ", ".join(f"{counts[s]} {s.split(', ', 1)[1]}" for s in MOVED if counts.get(s)) + ")"
    text += "".join(f", {counts[s]} {s}" for s in (MISSING, NEW) if counts.get(s))
    ref_scale = manifest(ref_dir).get("scale")
    if scale and ref_scale and ref_scale != scale:
        text += f"; the reference is scale {ref_scale!r}, this report {scale!r}"
    return text + "."


def cpus_note(grids: Mapping[str, GridLike], ref_dir: str | Path) -> str:
    """A sentence when the rerun's training runs ran on other CPUs than the reference's (XLA
    compiles for the host's vector ISA, so bits, and an unstable run's fate, can differ); ""
    when they are the same or either side does not say."""
    def seen(tables: list[pd.DataFrame]) -> set[str]:
        return {str(c) for t in tables if trains(t) for c in column(t, "cpu", None).dropna()}

    new = seen([g.table for g in grids.values()])
    old = seen([read_results(ref_dir, name) for name in grids])
    if not new or not old or new == old:
        return ""
    return (f" The reference ran on {'; '.join(sorted(old))}, this rerun on {'; '.join(sorted(new))}: XLA "
            "compiles for each CPU's vector ISA, so a cell can move in its last bits and an unstable run "
            "can go another way.")


def default_dir(scale: str, out: str | Path, root: str | Path = "reports") -> Path | None:
    """``reports/<scale>`` when it holds a shipped reference and is not the report's own output."""
    ref = Path(root) / scale
    if not (ref / MANIFEST).is_file() or ref.resolve() == Path(out).resolve():
        return None
    return ref


def carry(table: pd.DataFrame, shipped: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """A grid's table whose outcomes come from its shipped results instead of run directories:
    ``table`` (the grid file's runs, as :func:`study.analysis.results.table` makes it) with every
    outcome column of ``shipped`` (status, top-1, losses, timings, commit, ...) joined by run id.
    The configs stay the grid file's, so a shipped file's CSV types never reach a claim. Returns
    the table and the shipped run ids the grid no longer has (its file changed since)."""
    if shipped.empty:
        return table, []
    outcome = [c for c in shipped.columns if c not in IDENTITY and not c.startswith((cfg(""), axis("")))]
    base = table.drop(columns=[c for c in [*outcome, "dir"] if c in table.columns])
    out = base.merge(shipped[["run_id", *outcome]], on="run_id", how="left")
    out["status"] = out["status"].fillna(str(Status.MISSING))
    return out, sorted(set(shipped["run_id"]) - set(table["run_id"]))


def ship(out: str | Path, grids: Mapping[str, Any], scale: str) -> None:
    """Writes per grid ``<grid>/results.csv`` (:data:`KEEP`, the axes, the config but its paths,
    a task's scalars) and ``grids.json``."""
    out = Path(out)
    entries = []
    for name, g in grids.items():
        entries.append({"name": name, "axes": list(g.axes), "best": g.best, "error": g.error})
        if g.table.empty:
            continue
        axes = [axis(a) for a in g.axes]
        # The whole resolved config (a carried grid's claims read it), but not a path.
        config = [c for c in g.table.columns if c.startswith(cfg("")) and c not in map(cfg, PATH_KEYS)]
        # Also a task's own result scalars (signal_var_last, ...): numbers cannot be a path.
        scalars = [c for c in g.table.columns if not c.startswith((cfg(""), axis(""))) and c not in DROP
                   and (pd.api.types.is_numeric_dtype(g.table[c]) or pd.api.types.is_bool_dtype(g.table[c]))]
        keep = [c for c in dict.fromkeys(KEEP[:5] + axes + KEEP[5:] + config + scalars) if c in g.table.columns]
        (out / name).mkdir(parents=True, exist_ok=True)
        g.table[keep].to_csv(out / name / "results.csv", index=False)
    (out / MANIFEST).write_text(json.dumps({"scale": scale, "grids": entries}, indent=1) + "\n")


def scrub(out: str | Path, paths: Mapping[str, str]) -> None:
    """Replaces the machine's absolute paths (``paths``: absolute → shown) in the text files of
    ``out``: a placeholder's error or a grid file's location must not ship a home directory."""
    for f in Path(out).rglob("*"):
        if f.suffix not in (".html", ".csv", ".json", ".svg") or not f.is_file():
            continue
        text = orig = f.read_text()
        for absolute, shown in sorted(paths.items(), key=lambda kv: -len(kv[0])):  # longest first
            text = text.replace(absolute, shown)
        if text != orig:
            f.write_text(text)
