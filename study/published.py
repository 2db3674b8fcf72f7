"""The paper's published numbers, shipped as package data with their source column.

``study/data/nfnet_paper.csv`` is the project's copy of every number in the NFNets paper's
tables (one row each: source table/figure/section, experiment, model, metric, value and the
ablation knobs). Figures 2a/2b are plotted only in the paper; their rows hold the setup.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd


def load() -> pd.DataFrame:
    """All published rows as a tidy DataFrame (one number per row)."""
    with resources.files("study").joinpath("data/nfnet_paper.csv").open("rb") as f:
        return pd.read_csv(f)


def lookup(model: str, metric: str, source: str | None = None) -> float:
    """The single published value of ``metric`` for ``model`` (optionally from ``source``)."""
    df = load()
    rows = df[(df["model"] == model) & (df["metric"] == metric)]
    if source is not None:
        rows = rows[rows["source"] == source]
    if len(rows) != 1:
        raise KeyError(f"published: {len(rows)} rows for model={model!r} metric={metric!r}")
    return float(rows["value"].iloc[0])
