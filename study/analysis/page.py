"""The report's HTML page (index.html): one self-contained file beside its figures."""

from __future__ import annotations

import datetime
import html
from pathlib import Path

import pandas as pd

from study.analysis.aggregate import column

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f2f2f2} figure{margin:1em 0 2em} img{max-width:100%;border:1px solid #eee}
figcaption{font-size:13px;color:#444;max-width:60em} .PASS{background:#c8f0c8}
.FAIL{background:#f6c4c4} .INCONCLUSIVE{background:#f3e6b3} .INVALID{background:#d9d9d9} code{font-size:12px}
.muted{color:#777;font-size:13px}
"""


def _figure(png: str, caption: str) -> str:
    svg = png[:-4] + ".svg"
    key = Path(png).stem
    return (f'<figure id="{key}"><img src="{png}" alt="{html.escape(caption[:80])}">'
            f'<figcaption>{html.escape(caption)} <a href="{svg}">SVG</a></figcaption></figure>')


def status(grids: dict) -> pd.DataFrame:
    """Runs per grid and status (done, diverged, missing, running, ...), and why a grid is empty."""
    from study.status import Status

    known = [str(s) for s in Status]
    rows = []
    for name, g in grids.items():
        counts = column(g.table, "status", "").value_counts().to_dict() if not g.table.empty else {}
        rows.append(dict(grid=name, runs=len(g.table), **{k: int(counts.pop(k, 0)) for k in known},
                         **{k: int(v) for k, v in counts.items()},
                         note="; ".join(n for n in (g.error, getattr(g, "carried", None), f"best {g.best} of seeds" if g.best else "")
                                        if n)))
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


def _reference(diff: pd.DataFrame, line: str) -> list[str]:
    """The rerun against the shipped reference: one line, then the cells that are not the same."""
    from study.analysis.reference import SAME

    off = diff[diff["status"] != SAME]
    parts = ["<h2>Rerun vs the shipped reference</h2>", f"<p>{html.escape(line)} Every cell in "
             '<a href="reference.csv">reference.csv</a>.</p>']
    if len(off):
        cols = ["grid", "cell", "ref_mean", "ref_lo", "ref_hi", "ref_n", "rerun_mean", "rerun_n", "delta", "status"]
        parts.append(off[cols].to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:.4f}"))
    return parts


def render(scale: str, runs_dir: Path, grids: dict, verdicts: pd.DataFrame, comp: pd.DataFrame,
           sections: dict[str, list[tuple[str, str]]],
           reference: tuple[pd.DataFrame, str] | None = None) -> str:
    """index.html: runs, the shipped reference's comparison (when given: its cells and the
    one-line summary), claim checks, each section's figures, the comparison, curves, signal."""
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
        f"generated {stamp} by study {__version__}. Published numbers: <code>study/analysis/data/nfnet_paper.csv</code> "
        f"(source column per number). Run commits: {html.escape(', '.join(c[:10] for c in commits) or 'none')}.</p>",
        f"<p>Claims: {', '.join(f'{v} {k}' for k, v in sorted(tally.items()))}. "
        + ("Accuracy at this scale is <b>not comparable</b> with the paper's ImageNet numbers; the claims are "
           "checked on the grids' own reruns." if scale != "paper" else "") + "</p>",
        "<h2>Runs</h2>", status(grids).to_html(index=False, border=0),
        *(_reference(*reference) if reference is not None else []),
        "<h2>Claim checks</h2>", _claims(verdicts),
    ]
    tail = {k: sections.pop(k) for k in ("Training curves", "Signal propagation") if k in sections}
    for title, figs in sections.items():  # the grids' own sections, in the grids' order
        parts += [f"<h2>{html.escape(title)}</h2>"] + [_figure(*f) for f in figs]
    parts += [
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
    parts += ["<h2>Training curves</h2>"] + ([_figure(*f) for f in tail.get("Training curves", [])] or
                                              ['<p class="muted">no finished training runs yet</p>'])
    parts += ["<h2>Signal propagation</h2>"] + [_figure(*f) for f in tail.get("Signal propagation", [])]
    parts += ["</body></html>"]
    return "\n".join(parts)
