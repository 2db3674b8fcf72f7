"""The paper's published numbers, shipped as package data with their source column.

``study/analysis/data/nfnet_paper.csv`` is the project's copy of every number in the NFNets paper's
tables (one row each: source table/figure/section, experiment, model, metric, value and the
ablation knobs). Figures 2a/2b are plotted only in the paper; their rows hold the setup.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd


def load() -> pd.DataFrame:
    """All published rows as a tidy DataFrame (one number per row)."""
    with resources.files("study.analysis").joinpath("data/nfnet_paper.csv").open("rb") as f:
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


# Registry name -> the name Table 3 prints. F6 appears only as "F6+SAM": SAM changes the
# training, not the architecture, so its params / FLOPs are F6's.
NFNET_ROWS = {f"nfnet-f{i}": f"NFNet-F{i}" for i in range(6)} | {"nfnet-f6": "NFNet-F6+SAM"}
EFFNET_ROWS = [f"EffNet-B{i}" for i in range(8)]
_TABLE3 = {"params_millions": "params_m", "flops_billions": "flops_b", "top1": "top1",
           "train_latency_ms_tpuv3": "latency_tpuv3_ms", "train_latency_ms_v100": "latency_v100_ms"}


def table3(models: list[str]) -> pd.DataFrame:
    """Table 3 rows of ``models`` (paper names) wide: params_m, flops_b, top1, latencies, source.

    Models Table 3 does not list are left out (EfficientNet B1 and B2 are not in it).
    """
    df = load()
    df = df[(df["source"] == "Table 3") & df["model"].isin(models) & df["metric"].isin(list(_TABLE3))]
    wide = df.pivot_table(index="model", columns="metric", values="value", aggfunc="first")
    wide = wide.rename(columns=_TABLE3).reindex(columns=list(_TABLE3.values()))
    order = [m for m in models if m in wide.index]
    wide = wide.loc[order].reset_index().rename(columns={"model": "paper_model"})
    wide.columns.name = None
    wide["source"] = "Table 3"
    return wide


def nfnets() -> pd.DataFrame:
    """Table 3's NFNet F0–F6 with the registry name in ``model``."""
    wide = table3(list(NFNET_ROWS.values()))
    wide.insert(0, "model", [k for k, v in NFNET_ROWS.items() if v in set(wide["paper_model"])])
    return wide


def efficientnets() -> pd.DataFrame:
    """Table 3's EfficientNet baselines (B0, B3–B7)."""
    return table3(EFFNET_ROWS)
