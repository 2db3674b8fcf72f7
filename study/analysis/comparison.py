"""Ours against the published numbers: structure, latency and accuracy, one tidy table.

- structure: params and FLOPs (MACs, as the paper counts them) of NFNet F0–F6 at the test
  resolution against Table 3, rounded to the digits the paper prints, so Δ = 0 means equal;
- latency: this machine's median training step (paper protocol, App. A.2) against Table 3's
  TPUv3 and V100 columns, with both hardware setups named; a number from other hardware is
  shown for reference, never judged;
- accuracy: each grid cell's top-1 (mean over seeds) against Table 3 only where the rerun is the
  same model, dataset and recipe (paper scale, ImageNet, 360 epochs, batch 4096, λ 0.01,
  MixUp/CutMix + RandAugment); everything else is "not comparable: …" and is not compared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pandas as pd

from study.analysis import published
from study.analysis.aggregate import column, summarize
from study.analysis.columns import axis, cfg, knob

COLUMNS = ["section", "item", "metric", "ours", "published", "delta", "unit", "hardware_ours",
           "hardware_published", "source", "verdict", "runs"]
TOL_TOP1_PP = 0.5  # Table 3 is a mean of 3 seeds; NFNet seed spread is a few tenths of a point
PAPER_HW = {"latency_tpuv3_ms": "TPUv3, 32 cores × batch 32, bf16",
            "latency_v100_ms": "V100 (one GPU), batch 32, fp16"}
VARIANTS = [f"nfnet-f{i}" for i in range(8)]


def structure(names: list[str]) -> pd.DataFrame:
    """params and MACs at the test resolution per model (:func:`study.models.structure`)."""
    from study import models

    rows = [dict(model=n, **dataclasses.asdict(models.structure(n))) for n in names]
    return pd.DataFrame(rows, columns=["model", "params", "macs", "resolution"])


def _digits(value: float) -> int:
    text = repr(float(value))
    return len(text.split(".")[1].rstrip("0")) if "." in text else 0


def structure_rows(struct: pd.DataFrame) -> list[dict]:
    pub = published.nfnets().set_index("model")
    rows = []
    for _, r in struct.iterrows():
        if r["model"] not in pub.index:
            continue
        p = pub.loc[r["model"]]
        for metric, ours, paper, unit in (("params", r["params"] / 1e6, p["params_m"], "M"),
                                          ("FLOPs (MACs)", r["macs"] / 1e9, p["flops_b"], "B")):
            d = _digits(paper)
            delta = round(round(ours, d) - paper, d)
            rows.append(dict(section="structure", item=r["model"], metric=metric, ours=round(ours, d + 2),
                             published=paper, delta=delta, unit=unit,
                             hardware_ours=f"test resolution {r['resolution']} px",
                             hardware_published=p["paper_model"], source="Table 3",
                             verdict="match (to printed digits)" if delta == 0 else "differs", runs=""))
    return rows


def measured_latency(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Finished latency runs of any grid: model, latency_ms, images_per_s, batch, resolution,
    dtype, device_kind, run_id (one row per run)."""
    keep = ["model", "latency_ms", "images_per_s", "batch", "resolution", "dtype", "device_kind", "run_id"]
    parts = []
    for df in tables.values():
        if df.empty or "latency_ms" not in df.columns:
            continue
        ok = (column(df, "status", "") == "done") & pd.to_numeric(df["latency_ms"], errors="coerce").notna()
        ok &= column(df, knob("norm"), "nf").fillna("nf") != "batchnorm"  # Table 6's BN versions: not an NFNet
        part = df[ok].assign(model=column(df, cfg("model"), ""))
        for k in keep:
            if k not in part.columns:
                part[k] = column(part, cfg(k)) if cfg(k) in part.columns else np.nan
        parts.append(part[keep])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=keep)


def hardware(r: pd.Series) -> str:
    return f"{r['device_kind']}, batch {r['batch']:.0f}, {r['resolution']:.0f} px, {r['dtype']}"


def hardware_summary(measured: pd.DataFrame) -> str:
    """One line for all latency runs: device, batch, dtype and resolution (each variant's own
    train resolution, as the paper's protocol, or the range used)."""
    if measured.empty:
        return "none measured yet"
    from study import models

    def values(col: str, fmt=str) -> str:
        return "/".join(fmt(v) for v in sorted(measured[col].dropna().unique()))
    res = measured.apply(lambda r: r["resolution"] == models.PRESETS[r["model"]].train_resolution
                         if r["model"] in models.PRESETS else False, axis=1)
    px = "each variant's train resolution" if res.all() else \
        f"{measured['resolution'].min():.0f}–{measured['resolution'].max():.0f} px"
    return f"{values('device_kind')}, batch {values('batch', lambda v: f'{v:.0f}')}, {values('dtype')}, {px}"


def latency_rows(measured: pd.DataFrame) -> list[dict]:
    pub = published.nfnets().set_index("model")
    rows = []
    for name in VARIANTS:
        mine = measured[measured["model"] == name]
        r = mine.iloc[-1] if len(mine) else None
        for col, hw in PAPER_HW.items():
            paper = pub.loc[name, col] if name in pub.index else np.nan
            if r is None:
                verdict = "missing: no latency run for this variant"
            elif not np.isfinite(paper):
                verdict = "no published number" + (" (F7 is not in the paper)" if name == "nfnet-f7" else "")
            elif "V100" in str(r["device_kind"]) and col == "latency_v100_ms" and r["batch"] == 32:
                verdict = "same hardware and batch: ratio " + f"{r['latency_ms'] / paper:.2f}"
            else:
                verdict = "reference only: different hardware"
            rows.append(dict(section="latency", item=name, metric=f"train step ms vs {col.split('_')[1]}",
                             ours=None if r is None else round(float(r["latency_ms"]), 2), published=paper,
                             delta=None if r is None or not np.isfinite(paper) else round(r["latency_ms"] - paper, 2),
                             unit="ms", hardware_ours="" if r is None else hardware(r), hardware_published=hw,
                             source="Table 3", verdict=verdict, runs="" if r is None else r["run_id"]))
    return rows


def reruns(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Finished paper-scale ImageNet runs of NFNet F-variants, mean top-1 (%) per variant."""
    parts = []
    for df in tables.values():
        if df.empty:
            continue
        ok = ((column(df, "status", "") == "done") & (column(df, cfg("dataset"), "") == "imagenet")
              & (column(df, "scale", "") == "paper") & column(df, cfg("model"), "").isin(list(published.NFNET_ROWS))
              & (column(df, cfg("task"), "train").fillna("train") == "train"))
        parts.append(pd.DataFrame({"model": df.loc[ok, cfg("model")],
                                   "top1": pd.to_numeric(column(df, "top1")[ok], errors="coerce") * 100}))
    if not parts:
        return pd.DataFrame(columns=["model", "top1", "latency_tpuv3_ms"])
    runs = pd.concat(parts).groupby("model", as_index=False)["top1"].mean()
    return runs.merge(published.nfnets()[["model", "latency_tpuv3_ms"]], on="model")


def _recipe_mismatch(cell: pd.DataFrame, name: str) -> str | None:
    """The first way ``cell``'s runs differ from Table 3's recipe for ``name``, or None."""
    from study import models

    if name == "nfnet-f6":
        return "recipe: Table 3's F6 is trained with SAM, which the trainer does not implement"
    pub = published.load()
    mag = pub[(pub["metric"] == "randaugment_magnitude") & (pub["model"] == published.NFNET_ROWS[name])]
    want = {"epochs": 360, "batch_size": 4096, "agc": True, "agc_clipping": 0.01, "mixup_cutmix": True,
            "randaugment": str([4, int(mag["value"].iloc[0])]) if len(mag) else None}
    for key, value in want.items():
        got = column(cell, cfg(key), None).iloc[0]
        same = str(got).lower() == str(value).lower() or (
            not isinstance(value, (bool, str)) and pd.to_numeric(got, errors="coerce") == value)
        if not same:
            return f"recipe: {key} = {got} (Table 3: {value})"
    size = pd.to_numeric(column(cell, cfg("image_size"), 0), errors="coerce").iloc[0]
    if size not in (0, models.PRESETS[name].train_resolution):
        return f"recipe: image_size = {size:.0f} (Table 1: {models.PRESETS[name].train_resolution})"
    return None


def accuracy_rows(tables: Mapping[str, pd.DataFrame], best: Mapping[str, int | None],
                  axes: Mapping[str, list[str]]) -> list[dict]:
    """One row per grid cell (its label, model and the grid's ``axes``, seeds pooled)."""
    pub = published.nfnets().set_index("model")
    rows = []
    for grid, df in tables.items():
        if df.empty or (column(df, cfg("task"), "train") == "latency").all():
            continue
        names = [a for a in axes.get(grid, []) if a != "seed"]
        by = ["label", cfg("model"), *map(axis, names)]
        for col in by:
            if col not in df.columns:
                df = df.assign(**{col: np.nan})
        for _, runs in df.groupby(by, dropna=False, sort=True):
            cell = summarize(runs, by, best.get(grid)).iloc[0]
            name = cell[cfg("model")]
            item = f"{grid}/{cell['label']}" + "".join(f" {a}={cell[axis(a)]}" for a in names
                                                       if pd.notna(cell[axis(a)]))
            paper = pub.loc[name, "top1"] if name in pub.index else np.nan
            # The paper's protocol where the grid asks for it (the best 4 of 5 seeds, App. D).
            score = cell["best_mean"] if np.isfinite(cell["best_mean"]) else cell["mean"]
            ours = score * 100 if cell["n_finished"] else np.nan
            scale, dataset = column(runs, "scale", "").iloc[0], column(runs, cfg("dataset"), "").iloc[0]
            delta = None
            if scale != "paper" or dataset != "imagenet":
                verdict = f"not comparable: scale ({scale}, {dataset})"
            elif name not in pub.index:
                verdict = "not comparable: no published number for this model (Figure 2 is plotted only)"
            elif round(pd.to_numeric(column(runs, "params"), errors="coerce").iloc[0] / 1e6, 1) != pub.loc[name, "params_m"]:
                verdict = "not comparable: architecture differs from Table 3's"
            elif (why := _recipe_mismatch(runs, name)) is not None:
                verdict = f"not comparable: {why}"
            elif not cell["n_finished"]:
                verdict = "missing: no finished run"
            else:
                delta = round(ours - paper, 2)
                verdict = "within tolerance" if abs(delta) <= TOL_TOP1_PP else "outside tolerance"
                verdict += f" (±{TOL_TOP1_PP} pp)"
            rows.append(dict(section="accuracy", item=item, metric="top-1 (mean of seeds)",
                             ours=None if np.isnan(ours) else round(ours, 2),
                             published=paper if verdict.startswith(("within", "outside")) else np.nan,
                             delta=delta, unit="%", hardware_ours="", hardware_published="",
                             source="Table 3" if delta is not None else "", verdict=verdict,
                             runs=(cell["run_ids"] or cell["unfinished"]) + (
                                 f" ({cell['n_diverged']} diverged, scored at chance)" if cell["n_diverged"] else "")))
    return rows


def build(tables: Mapping[str, pd.DataFrame], best: Mapping[str, int | None],
          axes: Mapping[str, list[str]], struct: pd.DataFrame | None = None) -> pd.DataFrame:
    """The comparison table (``COLUMNS``); ``struct`` defaults to ``structure(F0–F6)``."""
    struct = structure(VARIANTS[:7]) if struct is None else struct
    rows = (structure_rows(struct) + latency_rows(measured_latency(tables))
            + accuracy_rows(tables, best, axes))
    return pd.DataFrame(rows, columns=COLUMNS)
