"""``study report``: every grid's results → figures, comparison.csv, claims.csv and index.html.

Reads each ``ablations/*.yaml`` at one scale and its run directories (through the grid's
``results.parquet`` when it is newer than every run's result, else ``study.results.table``), so a
half-finished or empty grid is a table with missing rows, never an error. Writes into ``out``:
``index.html`` (self-contained apart from the figures beside it; opens offline),
``figures/*.png`` and ``*.svg``, ``comparison.csv`` and ``claims.csv``.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from study import claims as claims_lib
from study import comparison, figures, published
from study.aggregate import column

log = logging.getLogger(__name__)
ORDER = ["agc", "agc-lambda", "agc-layers", "depth", "width", "variants"]


@dataclasses.dataclass
class GridResults:
    name: str
    path: Path
    table: pd.DataFrame
    best: int | None = None
    header: str = ""
    error: str | None = None  # why there is no table (no such scale, bad file)


def _fresh_parquet(grid, root: Path) -> pd.DataFrame | None:
    """The grid's results.parquet if nothing it was made from changed since."""
    pq = root / grid.name / grid.scale / "results.parquet"
    if not pq.exists():
        return None
    sources = [grid.path] + [r.directory(root) / "result.json" for r in grid.runs]
    newest = max((p.stat().st_mtime for p in sources if p.exists()), default=0)
    if pq.stat().st_mtime < newest or any(r.directory(root).exists() and not
                                          (r.directory(root) / "result.json").exists() for r in grid.runs):
        return None
    try:
        return pd.read_parquet(pq)
    except (OSError, ValueError):
        return None


def _planned(grid, root: Path) -> pd.DataFrame:
    """The rows ``results.table`` gives a grid none of whose runs exist yet (all "missing"),
    without building every model to count its parameters (minutes for NFNet F0–F7)."""
    rows = []
    for run in grid.runs:
        row = {"grid": grid.name, "scale": grid.scale, "run_id": run.run_id, "label": run.label,
               "status": "missing", "dir": str(run.directory(root))}
        row.update({f"axis.{k}": v for k, v in run.varied.items()})
        for k, v in run.config.items():
            if k == "model_overrides":
                row.update({f"cfg.model.{mk}": str(mv) if isinstance(mv, (list, tuple)) else mv for mk, mv in v.items()})
            else:
                row[f"cfg.{k}"] = str(v) if isinstance(v, (list, tuple)) else v
        rows.append(row)
    return pd.DataFrame(rows)


def _hashable(df: pd.DataFrame) -> pd.DataFrame:
    """List-valued cells (an axis such as ``agc_exclude``) as the strings the config columns use."""
    seq = (list, tuple, np.ndarray)  # parquet gives list columns back as arrays
    for c in df.columns:
        if df[c].dtype == object and df[c].map(lambda v: isinstance(v, seq)).any():
            df[c] = df[c].map(lambda v: str(np.asarray(v).tolist()) if isinstance(v, seq) else v)
    return df


def collect(scale: str, runs_dir: str | Path, grids_dir: str | Path = "ablations") -> dict[str, GridResults]:
    """Every grid file's results at ``scale`` (empty tables where nothing ran or the grid has no
    such scale)."""
    from study import grid as grid_lib
    from study import results

    out: dict[str, GridResults] = {}
    root = Path(runs_dir)
    for path in sorted(Path(grids_dir).glob("*.yaml")):
        name = path.stem
        try:
            g = grid_lib.load(path, scale, check_paths=False)  # reading results needs no data
        except grid_lib.GridError as e:
            out[name] = GridResults(name, path, pd.DataFrame(), error=str(e))
            continue
        try:
            if not any(r.directory(root).exists() for r in g.runs):
                df = _planned(g, root)  # nothing ran: skip counting params of every model
            else:
                df = _fresh_parquet(g, root)
                df = results.table(g, root) if df is None else df
        except Exception as e:  # noqa: BLE001 — one broken grid must not hide the others
            log.exception("results of %s", path)
            out[g.name] = GridResults(g.name, path, pd.DataFrame(), g.aggregate.get("best"), g.header,
                                      error=f"could not read results: {type(e).__name__}: {e}")
            continue
        out[g.name] = GridResults(g.name, path, _hashable(df), g.aggregate.get("best"), g.header)
    return dict(sorted(out.items(), key=lambda kv: (ORDER.index(kv[0]) if kv[0] in ORDER else 99, kv[0])))


def _draw(title: str, func, *args):
    """``func(*args)``, or a placeholder naming the error: one bad figure must not sink the report."""
    try:
        return func(*args)
    except Exception as e:  # noqa: BLE001
        log.exception("figure %s", title)
        return figures.placeholder(title, f"could not draw: {type(e).__name__}: {e}")


def _save(fig, out: Path, name: str) -> str:
    import matplotlib.pyplot as plt

    (out / "figures").mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "figures" / f"{name}.png", dpi=110, bbox_inches="tight")
    fig.savefig(out / "figures" / f"{name}.svg", bbox_inches="tight")
    plt.close(fig)
    return f"figures/{name}.png"


def _reruns(grids: dict[str, GridResults]) -> pd.DataFrame:
    """Finished paper-scale ImageNet runs of NFNet F-variants, mean top-1 (%) per variant."""
    parts = []
    for g in grids.values():
        df = g.table
        if df.empty:
            continue
        ok = ((column(df, "status", "") == "done") & (column(df, "cfg.dataset", "") == "imagenet")
              & (column(df, "scale", "") == "paper") & column(df, "cfg.model", "").isin(list(published.NFNET_ROWS))
              & (column(df, "cfg.task", "train").fillna("train") == "train"))
        parts.append(pd.DataFrame({"model": df.loc[ok, "cfg.model"],
                                   "top1": pd.to_numeric(column(df, "top1")[ok], errors="coerce") * 100}))
    if not parts:
        return pd.DataFrame(columns=["model", "top1", "latency_tpuv3_ms"])
    runs = pd.concat(parts).groupby("model", as_index=False)["top1"].mean()
    return runs.merge(published.nfnets()[["model", "latency_tpuv3_ms"]], on="model")


def _signal(models: tuple[str, ...], resolution: int):
    """Signal-propagation rows per model (Gaussian input; BN models on batch statistics)."""
    import jax
    from flax import nnx

    from study import models as zoo
    from study.signal_prop import signal_propagation

    rows = {}
    for name in models:
        m = zoo.create(name, rngs=nnx.Rngs(0))
        x = jax.random.normal(jax.random.key(1), (8, resolution, resolution, m.cfg.in_channels))
        is_bn = zoo.PRESETS[name].family == "resnet"
        label = f"{'BN' if is_bn else 'NF'}: {name}"
        rows[label] = signal_propagation(m, x, batch_stats=is_bn)
    return rows


def build(scale: str = "local", runs_dir: str | Path = "runs", out: str | Path = "reports",
          grids_dir: str | Path = "ablations", signal_models: tuple[str, ...] | None = ("nf-resnet-50", "resnet-50"),
          signal_resolution: int = 64, structure: pd.DataFrame | None = None) -> Path:
    """Writes the report for ``scale`` into ``out``; returns the path of index.html."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in (out / "figures").glob("*.[ps][nv]g"):  # a grid with no curves now leaves none behind
        old.unlink()
    grids = collect(scale, runs_dir, grids_dir)
    tables = {k: g.table for k, g in grids.items()}
    best = {k: g.best for k, g in grids.items()}

    verdicts = claims_lib.check(tables, best)
    verdicts.to_csv(out / "claims.csv", index=False)
    comp = comparison.build(tables, best, structure)
    comp.to_csv(out / "comparison.csv", index=False)
    status(grids).to_csv(out / "status.csv", index=False)

    figs: dict[str, tuple[str, str]] = {}  # key -> (png, caption)

    def empty(name: str) -> str:
        g = grids.get(name)
        if g is None:
            return f"no grid file ablations/{name}.yaml"
        if g.error:
            return g.error
        return f"grid {name!r} at scale {scale!r}: no finished run yet (make ablation-… SCALE={scale})"

    def has(name: str) -> bool:
        g = grids.get(name)
        return g is not None and not g.table.empty and column(g.table, "status", "").isin(["done", "diverged"]).any()

    measured = comparison.measured_latency(tables)
    f1 = _draw("Figure 1", figures.figure1, published.nfnets(), published.efficientnets(), measured, _reruns(grids))
    hw = comparison.hardware_summary(measured)
    figs["fig1"] = (_save(f1, out, "fig1_top1_vs_latency"),
                    "Figure 1. Left: the paper's Table 3 — ImageNet top-1 against TPUv3 training-step latency for "
                    "NFNet F0–F6 (F6 with SAM) and EfficientNet B0, B3–B7; stars are ImageNet reruns, drawn at the "
                    "variant's published TPUv3 latency so their top-1 compares vertically. Right: step latency per "
                    f"variant — Table 3's TPUv3 and V100 columns and this machine's measurement ({hw}). Measured "
                    "here is not a V100 or TPUv3 number.")
    for key, name, func, title, caption in (
            ("fig2a", "agc", figures.figure2a, "Figure 2a",
             "Figure 2a. Test top-1 against batch size: NF-ResNet with and without AGC, and the BN-ResNet; "
             "mean ± std over seeds, diverged runs as red ✕ at chance."),
            ("fig2b", "agc-lambda", figures.figure2b, "Figure 2b",
             "Figure 2b. Test top-1 against the clipping threshold λ, one line per batch size."),
            ("layers", "agc-layers", figures.layers, "AGC layer ablation",
             "§4.1 layer ablation: test top-1 with the named layers left unclipped by AGC (the grid's batch "
             "size and λ; the paper: batch 4096, λ 0.01); a diverged run is a hatched red bar at chance.")):
        fig = _draw(title, func, grids[name].table, best[name]) if has(name) else figures.placeholder(title, empty(name))
        figs[key] = (_save(fig, out, key), caption)
    for key, name, knob, title, hue in (("depth", "depth", "cfg.model.depth", "Depth rules", "label"),
                                        ("width", "width", "cfg.model.width_mult", "Width patterns",
                                         "cfg.model.width_pattern")):
        fig = _draw(title, figures.scaling, grids[name].table, best[name], knob, title, hue) if has(name) else \
            figures.placeholder(title, empty(name))
        figs[key] = (_save(fig, out, key), f"{title}: test top-1 against MACs per image, labelled by {knob[10:]}.")
    for name, g in grids.items():
        if has(name) and (column(g.table, "cfg.task", "train").fillna("train") == "train").any():
            fig = _draw(f"Training curves: {name}", figures.curves, g.table, f"Training curves: {name} ({scale})")
            if fig is not None:
                figs[f"curves-{name}"] = (_save(fig, out, f"curves_{name}"),
                                          f"Grid {name}: training loss, test top-1 and fraction of units "
                                          "clipped by AGC against epochs, one line per run.")
    if signal_models:
        fig = _draw("Signal propagation", lambda: figures.signal(_signal(signal_models, signal_resolution),
                                                                 signal_resolution))
    else:
        fig = figures.placeholder("Signal propagation", "not computed (signal_models=None)")
    figs["signal"] = (_save(fig, out, "signal_propagation"),
                      "Signal propagation at initialisation: NF-ResNet (skip gains set to 1, dashed: the α² "
                      "schedule its β scalings expect) against the BN-ResNet on batch statistics.")

    index = out / "index.html"
    index.write_text(_html(scale, Path(runs_dir), grids, verdicts, comp, figs))
    return index


# --- HTML --------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f2f2f2} figure{margin:1em 0 2em} img{max-width:100%;border:1px solid #eee}
figcaption{font-size:13px;color:#444;max-width:60em} .PASS{background:#c8f0c8}
.FAIL{background:#f6c4c4} .INCONCLUSIVE{background:#f3e6b3} code{font-size:12px}
.muted{color:#777;font-size:13px}
"""


def _figure(figs: dict, key: str) -> str:
    png, caption = figs[key]
    svg = png[:-4] + ".svg"
    return (f'<figure id="{key}"><img src="{png}" alt="{html.escape(caption[:80])}">'
            f'<figcaption>{html.escape(caption)} <a href="{svg}">SVG</a></figcaption></figure>')


def status(grids: dict[str, GridResults]) -> pd.DataFrame:
    """Runs per grid and status (done, diverged, missing, running, ...), and why a grid is empty."""
    from study.status import Status

    known = [str(s) for s in Status]
    rows = []
    for name, g in grids.items():
        counts = column(g.table, "status", "").value_counts().to_dict() if not g.table.empty else {}
        rows.append(dict(grid=name, runs=len(g.table), **{k: int(counts.pop(k, 0)) for k in known},
                         **{k: int(v) for k, v in counts.items()},
                         note=g.error or (f"best {g.best} of seeds" if g.best else "")))
    df = pd.DataFrame(rows, columns=["grid", "runs", *known, "note"] if not rows else None)
    counts = [c for c in df.columns if c not in ("grid", "note")]
    df[counts] = df[counts].fillna(0).astype(int)
    return df[["grid", *counts, "note"]]


def _claims(verdicts: pd.DataFrame) -> str:
    body = "".join(
        f'<tr><td>{html.escape(r.claim)}<div class="muted">{html.escape(r.source)}</div></td>'
        f'<td>{html.escape(r.grid)}</td><td class="{r.verdict}"><b>{r.verdict}</b></td>'
        f"<td><code>{html.escape(r.evidence)}</code></td></tr>" for r in verdicts.itertuples())
    return ("<table><tr><th>claim (paper)</th><th>grid</th><th>verdict</th><th>evidence</th></tr>"
            f"{body}</table>")


def _html(scale: str, runs_dir: Path, grids, verdicts: pd.DataFrame, comp: pd.DataFrame, figs: dict) -> str:
    from study import __version__

    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    commits = sorted({str(c) for g in grids.values() for c in column(g.table, "commit", None).dropna()})
    tally = verdicts["verdict"].value_counts().to_dict()
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>NFNets reproduction report ({scale})</title>"
        f"<style>{_CSS}</style></head><body>",
        "<h1>NFNets reproduction report</h1>",
        f"<p>Brock, De, Smith &amp; Simonyan, <i>High-Performance Large-Scale Image Recognition Without "
        f"Normalization</i> (ICML 2021). Scale <b>{scale}</b>, runs from <code>{html.escape(str(runs_dir))}</code>, "
        f"generated {stamp} by study {__version__}. Published numbers: <code>study/data/nfnet_paper.csv</code> "
        f"(source column per number). Run commits: {html.escape(', '.join(c[:10] for c in commits) or 'none')}.</p>",
        f"<p>Claims: {', '.join(f'{v} {k}' for k, v in sorted(tally.items()))}. "
        + ("Accuracy at this scale is <b>not comparable</b> with the paper's ImageNet numbers; the claims are "
           "checked on the grids' own reruns." if scale != "paper" else "") + "</p>",
        "<h2>Runs</h2>", status(grids).to_html(index=False, border=0),
        "<h2>Claim checks</h2>", _claims(verdicts),
        "<h2>Figure 1: accuracy vs training latency</h2>", _figure(figs, "fig1"),
        "<h2>Figure 2: adaptive gradient clipping</h2>", _figure(figs, "fig2a"), _figure(figs, "fig2b"),
        "<h2>Ablations</h2>", _figure(figs, "layers"), _figure(figs, "depth"), _figure(figs, "width"),
        "<h2>Comparison with the published numbers</h2>",
        '<p class="muted">Also in <a href="comparison.csv">comparison.csv</a>; claims in '
        '<a href="claims.csv">claims.csv</a>.</p>',
    ]
    for section, title in (("structure", "Structure (Table 3)"), ("latency", "Training latency"),
                           ("accuracy", "Accuracy reruns")):
        part = comp[comp["section"] == section].drop(columns="section").dropna(axis=1, how="all")
        table = part.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:g}")
        compared = part["verdict"].str.startswith(("within", "outside")).sum() if len(part) else 0
        if section == "accuracy" and len(part) and not compared:  # nothing to compare: fold it away
            table = (f"<details><summary>{len(part)} grid cells, none comparable with the paper "
                     f"(same dataset, model and recipe needed)</summary>{table}</details>")
        parts += [f"<h3>{title}</h3>", table if len(part) else '<p class="muted">none</p>']
    curves = [k for k in figs if k.startswith("curves-")]
    parts += ["<h2>Training curves</h2>"] + ([_figure(figs, k) for k in curves] or
                                              ['<p class="muted">no finished training runs yet</p>'])
    parts += ["<h2>Signal propagation</h2>", _figure(figs, "signal"), "</body></html>"]
    return "\n".join(parts)
