"""``study report``: every grid's results → figures, comparison.csv, claims.csv and index.html.

Reads each ``ablations/*.yaml`` at one scale and its run directories (through the grid's
``results.parquet`` when it is newer than every run's result, else ``study.analysis.results.table``), so a
half-finished or empty grid is a table with missing rows, never an error. What a grid feeds is
declared in its own file (``report:``: a section, a figure drawn by a named drawer of
:mod:`study.analysis.figures`, its caption, and the ids of the claims in
:mod:`study.analysis.claims`); this module loops over the grids and knows none of them by name.
Writes into ``out``: ``index.html`` (self-contained apart from the figures beside it; opens
offline), ``figures/*.png`` and ``*.svg``, ``comparison.csv``, ``claims.csv`` and ``status.csv``;
with a shipped reference (:mod:`study.analysis.reference`) also ``reference.csv``, the rerun's
cells against it, and with ``ship`` the reference itself (per-grid ``results.csv``, ``grids.json``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from study.analysis import claims as claims_lib
from study.analysis import comparison, curves, figures, page
from study.analysis import reference as reference_lib
from study.analysis.aggregate import column
from study.analysis.columns import cfg
from study.status import FINISHED

log = logging.getLogger(__name__)


@dataclasses.dataclass
class GridResults:
    name: str
    path: Path
    table: pd.DataFrame
    best: int | None = None
    header: str = ""
    error: str | None = None  # why there is no table (no such scale, bad file)
    axes: list[str] = dataclasses.field(default_factory=list)
    report: dict[str, Any] = dataclasses.field(default_factory=dict)
    carried: str | None = None  # why its outcomes are the shipped reference's, not its runs'

    @property
    def finished(self) -> bool:
        return not self.table.empty and column(self.table, "status", "").isin(list(FINISHED)).any()


def _fresh_parquet(grid, root: Path) -> pd.DataFrame | None:
    """The grid's results.parquet if nothing it was made from changed since."""
    pq = root / grid.name / grid.scale / "results.parquet"
    if not pq.exists():
        return None
    records = [r.record(root) for r in grid.runs]
    times = [rec.result_mtime() for rec in records]
    newest = max([grid.path.stat().st_mtime, *(m for m in times if m is not None)])
    if pq.stat().st_mtime < newest or any(rec.dir.exists() and m is None for rec, m in zip(records, times)):
        return None
    try:
        df = pd.read_parquet(pq)
    except (OSError, ValueError):
        return None
    # ``dir`` is as the writer saw it (relative to its working directory): re-anchor it on this root,
    # or a report made from elsewhere (``--runs-dir /abs/runs``) finds no metrics for its curves.
    dirs = {r.run_id: str(rec.dir) for r, rec in zip(grid.runs, records)}
    if "dir" in df.columns and "run_id" in df.columns:
        df["dir"] = df["run_id"].map(dirs).fillna(df["dir"])
    return df


def _hashable(df: pd.DataFrame) -> pd.DataFrame:
    """List-valued cells (an axis such as ``agc_exclude``) as the strings the config columns use."""
    seq = (list, tuple, np.ndarray)  # parquet gives list columns back as arrays
    for c in df.columns:
        if df[c].dtype == object and df[c].map(lambda v: isinstance(v, seq)).any():
            df[c] = df[c].map(lambda v: str(np.asarray(v).tolist()) if isinstance(v, seq) else v)
    return df


def _check_report(g) -> str | None:
    """Why the grid file's ``report:`` names something that does not exist, or None."""
    spec = g.report
    draw = spec.get("figure", {}).get("draw")
    if draw is not None and draw not in figures.FIGURES:
        return f"{g.path}: report.figure.draw: unknown {draw!r}; valid: {', '.join(sorted(figures.FIGURES))}"
    for cid in spec.get("claims", []):
        if cid not in claims_lib.CLAIMS:
            return f"{g.path}: report.claims: unknown claim {cid!r}; valid: {', '.join(claims_lib.CLAIMS)}"
    return None


def collect(scale: str, runs_dir: str | Path, grids_dir: str | Path = "ablations") -> dict[str, GridResults]:
    """Every grid file's results at ``scale`` (empty tables where nothing ran or the grid has no
    such scale), in the order the grids ask for (``report.order``, then name)."""
    from study.analysis import results
    from study.grids import grid as grid_lib

    out: dict[str, GridResults] = {}
    root = Path(runs_dir)
    for path in sorted(Path(grids_dir).glob("*.yaml")):
        try:
            g = grid_lib.load(path, scale, check_paths=False)  # reading results needs no data
        except grid_lib.GridError as e:
            out[path.stem] = GridResults(path.stem, path, pd.DataFrame(), error=str(e))
            continue
        meta = dict(best=g.aggregate.get("best"), header=g.header, axes=g.axes, report=g.report)
        if (why := _check_report(g)) is not None:
            out[g.name] = GridResults(g.name, path, pd.DataFrame(), error=why, **{**meta, "report": {}})
            continue
        try:
            if not any(r.directory(root).exists() for r in g.runs):
                df = results.table(g, root, count=False)  # nothing ran: skip counting every model
            else:
                df = _fresh_parquet(g, root)
                df = results.table(g, root) if df is None else df
        except Exception as e:  # noqa: BLE001 — one broken grid must not hide the others
            log.exception("results of %s", path)
            out[g.name] = GridResults(g.name, path, pd.DataFrame(), error=f"could not read results: "
                                      f"{type(e).__name__}: {e}", **meta)
            continue
        out[g.name] = GridResults(g.name, path, _hashable(df), **meta)
    return dict(sorted(out.items(), key=lambda kv: (kv[1].report.get("order", 100), kv[0])))


def _draw(title: str, func, *args) -> tuple:
    """(figure, note): ``func(*args)`` (a drawer may add a note for the caption), or a placeholder
    and the error as the note: one bad figure must not sink the report."""
    try:
        drawn = func(*args)
    except Exception as e:  # noqa: BLE001
        log.exception("figure %s", title)
        why = f"could not draw: {type(e).__name__}: {e}"
        return figures.placeholder(title, why), why
    return drawn if isinstance(drawn, tuple) else (drawn, "")


def _save(fig, out: Path, name: str) -> str:
    import matplotlib.pyplot as plt

    (out / "figures").mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "figures" / f"{name}.png", dpi=110, bbox_inches="tight")
    # No date and a fixed id salt: the same figure gives the same SVG bytes, so a regenerated
    # report's diff shows only figures whose content changed (PNGs are already stable).
    with plt.rc_context({"svg.hashsalt": name}):
        fig.savefig(out / "figures" / f"{name}.svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return f"figures/{name}.png"


def _signal(models: tuple[str, ...], resolution: int):
    """Signal-propagation rows per model (Gaussian input; BN models on batch statistics)."""
    import jax
    from flax import nnx

    from study import models as zoo
    from study.models.signal_prop import signal_propagation

    rows = {}
    for name in models:
        m = zoo.create(name, rngs=nnx.Rngs(0))
        x = jax.random.normal(jax.random.key(1), (8, resolution, resolution, m.cfg.in_channels))
        is_bn = zoo.PRESETS[name].family == "resnet"
        label = f"{'BN' if is_bn else 'NF'}: {name}"
        rows[label] = signal_propagation(m, x, batch_stats=is_bn)
    return rows


def _grid_figure(g: GridResults, scale: str, tables: dict[str, pd.DataFrame], out: Path) -> tuple[str, str]:
    """The figure a grid declares, drawn (or a placeholder saying what is missing); (png, caption)."""
    spec = dict(g.report["figure"])
    draw, title, caption = spec.pop("draw"), spec.pop("title"), spec.pop("caption")
    func, needs_runs = figures.FIGURES[draw]
    if needs_runs and not g.finished:
        why = g.error or f"grid {g.name!r} at scale {scale!r}: no finished run yet (make ablation-… SCALE={scale})"
        return _save(figures.placeholder(title, why), out, g.name), caption
    fig, note = _draw(title, lambda: func(g.table, g.best, tables=tables, title=title, **spec))
    return _save(fig, out, g.name), f"{caption} {note}".strip()


def build(scale: str = "local", runs_dir: str | Path = "runs", out: str | Path = "reports",
          grids_dir: str | Path = "ablations", signal_models: tuple[str, ...] | None = ("nf-resnet-50", "resnet-50"),
          signal_resolution: int = 64, structure: pd.DataFrame | None = None,
          reference: str | Path | None = None, ship: bool = False,
          only: Collection[str] | None = None) -> Path:
    """Writes the report for ``scale`` into ``out``; returns the path of index.html. ``reference``:
    a shipped reference directory to compare the cells with (``reference.csv``); ``ship``: write
    ``out`` as a reference (its per-grid results, no machine paths). ``only`` (with ``ship``):
    the grids rebuilt from ``runs_dir``; every other grid keeps the outcomes and training-curve
    figure already shipped in ``out``, marked as carried over (one grid rerun updates its part)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    grids = collect(scale, runs_dir, grids_dir)
    kept: set[str] = set()
    if only is not None:
        if not ship:
            raise ValueError("only: rebuilding part of a reference needs ship")
        if unknown := sorted(set(only) - set(grids)):
            raise ValueError(f"only: unknown grid {unknown[0]!r}; valid: {', '.join(grids)}")
        kept = _carry(grids, set(grids) - set(only), out)
    for old in (out / "figures").glob("*.[ps][nv]g"):  # a grid with no curves now leaves none behind
        if old.stem not in {f"curves_{k}" for k in kept}:
            old.unlink()
    tables = {k: g.table for k, g in grids.items()}
    best = {k: g.best for k, g in grids.items()}

    verdicts = claims_lib.check(tables, best, {k: g.report.get("claims", []) for k, g in grids.items()})
    verdicts.to_csv(out / "claims.csv", index=False)
    comp = comparison.build(tables, best, {k: g.axes for k, g in grids.items()}, structure)
    comp.to_csv(out / "comparison.csv", index=False)
    page.status(grids).to_csv(out / "status.csv", index=False)
    ref = None
    (out / "reference.csv").unlink(missing_ok=True)  # a stale comparison must not outlive its reference
    if reference is not None:
        diff = reference_lib.compare(grids, reference)
        diff.to_csv(out / "reference.csv", index=False)
        ref = (diff, reference_lib.summary(diff, reference, scale) + reference_lib.cpus_note(grids, reference))

    sections: dict[str, list[tuple[str, str]]] = {}  # section -> [(png, caption)]
    for g in grids.values():
        if "figure" in g.report:
            sections.setdefault(g.report.get("section", "Ablations"), []).append(
                _grid_figure(g, scale, tables, out))
    curve_figs = []
    for name, g in grids.items():
        if name in kept:
            if (out / "figures" / f"curves_{name}.png").exists():
                curve_figs.append((f"figures/curves_{name}.png", f"Grid {name}: training curves, one line per "
                                   f"run ({g.carried})."))
        elif g.finished and (column(g.table, cfg("task"), "train").fillna("train") == "train").any():
            fig, note = _draw(f"Training curves: {name}", curves.curves, g.table, g.axes,
                              f"Training curves: {name} ({scale})")
            if fig is not None:
                curve_figs.append((_save(fig, out, f"curves_{name}"),
                                   f"Grid {name}: training loss, test top-1 and fraction of units "
                                   f"clipped by AGC against epochs, one line per run. {note}".strip()))
    note = ""
    if signal_models:
        fig, note = _draw("Signal propagation", lambda: curves.signal(
            _signal(signal_models, signal_resolution), signal_resolution))
    else:
        fig = figures.placeholder("Signal propagation", "not computed (signal_models=None)")
    signal = (_save(fig, out, "signal_propagation"),
              "Signal propagation at initialisation: NF-ResNet (skip gains set to 1, dashed: the α² "
              f"schedule its β scalings expect) against the BN-ResNet on batch statistics. {note}".strip())
    sections["Training curves"] = curve_figs
    sections["Signal propagation"] = [signal]
    index = out / "index.html"
    shown = _shown(runs_dir) if ship else Path(runs_dir)
    index.write_text(page.render(scale, shown, grids, verdicts, comp, sections, ref))
    if ship:
        reference_lib.ship(out, grids, scale)
        reference_lib.scrub(out, {str(Path(p).resolve()): str(_shown(p)) for p in (runs_dir, grids_dir)}
                            | {str(Path.cwd()) + "/": "", str(Path.home()): "~"})
    return index


def _carry(grids: dict[str, GridResults], names: set[str], ref: Path) -> set[str]:
    """Gives the grids ``names`` the outcomes shipped in ``ref`` (see
    :func:`study.analysis.reference.carry`); returns those that had any to keep."""
    kept = set()
    for name in sorted(names):
        g, shipped = grids[name], reference_lib.read_results(ref, name)
        if g.error or shipped.empty or not column(shipped, "status", "").isin(list(FINISHED)).any():
            continue  # nothing finished was shipped: there is nothing to keep
        g.table, stale = reference_lib.carry(g.table, shipped)
        commits = sorted({str(c)[:10] for c in column(g.table, "commit", None).dropna()})
        g.carried = (f"carried over from the shipped reference, not rerun in this report (run commits "
                     f"{', '.join(commits) or 'unknown'})"
                     + (f"; {len(stale)} shipped runs are no longer in the grid file" if stale else ""))
        kept.add(name)
    return kept


def _shown(path: str | Path) -> Path:
    """``path`` as a shipped file names it: relative to the working directory, else its name."""
    p = Path(path).resolve()
    return p.relative_to(Path.cwd()) if p.is_relative_to(Path.cwd()) else Path(p.name)
