"""Per-run figures: training curves of a grid's runs (loss, test top-1, fraction of units
clipped by AGC) and signal propagation at initialisation. Same conventions as
:mod:`study.analysis.figures`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from study.analysis.columns import axis, cfg  # noqa: E402
from study.record import RunRecord  # noqa: E402


def read_metrics(directory: str | Path) -> pd.DataFrame:
    """A run's metrics (the last row per step of a resumed run), as a DataFrame."""
    return pd.DataFrame(RunRecord(directory).metrics())


def _naming_axes(df: pd.DataFrame, axes: list[str]) -> list[str]:
    """The axes that name a run, in the grid's order; an axis set by another (accum_steps by
    batch_size in a zip, the model by the block label) is left out of the legend."""
    axes = [a for a in axes if axis(a) in df.columns]

    def implies(d: str, c: str) -> bool:
        rows = df[c].notna()
        if not rows.any() or df.loc[rows, d].isna().any():
            return False
        return bool((df.loc[rows, c].astype(str).groupby(df.loc[rows, d].astype(str)).nunique() <= 1).all())

    def distinct(a: str) -> int:
        return df[axis(a)].astype(str).nunique()

    keep: list[str] = []
    for a in axes:
        more = [axis(b) for b in axes if b != a and distinct(b) > distinct(a)]
        if not any(implies(d, axis(a)) for d in ["label", *map(axis, keep), *more]):
            keep.append(a)
    return keep


def curves(df: pd.DataFrame, axes: list[str], title: str) -> Figure | None:
    """Loss, test top-1 and the fraction of units AGC clipped against epochs, one line per run
    (named by its label and the grid's ``axes`` that tell it apart)."""
    names = _naming_axes(df, axes)
    parts = []
    for _, r in df.iterrows():
        m = read_metrics(r["dir"])
        if m.empty:
            continue
        name = " ".join([str(r["label"])] + [f"{a}={r[axis(a)]}" for a in names if pd.notna(r[axis(a)])])
        seed = r.get(cfg("seed"), 0)
        parts.append(m.assign(run=name, seed=seed, status=r["status"]))
    if not parts:
        return None
    m = pd.concat(parts, ignore_index=True)
    x = "epoch" if "epoch" in m.columns and m["epoch"].notna().any() else "step"
    train, evals = m[m["kind"] == "train"], m[m["kind"] == "eval"]
    fig, axs = plt.subplots(1, 3, figsize=(16, 4.4))
    runs = list(dict.fromkeys(m["run"]))  # the grid file's order
    palette = dict(zip(runs, sns.color_palette("husl", len(runs))))
    for ax, data, y, label in ((axs[0], train, "loss", "training loss"), (axs[1], evals, "top1", "test top-1"),
                               (axs[2], train, "clip_fraction", "fraction of units clipped")):
        if y in data.columns and data[y].notna().any():
            sns.lineplot(data=data, x=x, y=y, hue="run", hue_order=runs, palette=palette, marker="o",
                         markersize=4, errorbar=None, ax=ax, legend=ax is axs[2])
        ax.set(xlabel=x, ylabel=label)
    if axs[2].get_legend():
        sns.move_legend(axs[2], "upper left", bbox_to_anchor=(1.02, 1), fontsize=7, title=None)
    fig.suptitle(title, x=0.01, ha="left")
    fig.tight_layout()
    return fig


def signal(rows: dict[str, list[dict]], resolution: int) -> Figure:
    """Signal propagation at initialisation: per-block channel variance and squared mean."""
    fig, axs = plt.subplots(1, 2, figsize=(12, 4.2))
    for color, (name, rs) in zip(("C2", "C0", "C1", "C3"), rows.items()):
        d = pd.DataFrame(rs)
        axs[0].plot(d["block"], d["avg_var"], marker="o", color=color, label=name)
        axs[1].plot(d["block"], d["avg_sq_mean"], marker="o", color=color, label=name)
        if d["expected_var"].notna().any():
            axs[0].plot(d["block"], d["expected_var"], ls="--", color=color, alpha=0.7,
                        label=f"{name}: expected (α² schedule)")
    axs[0].set(xlabel="residual block", ylabel="average channel variance", title="Average channel variance")
    axs[1].set(xlabel="residual block", ylabel="average squared channel mean", title="Average squared channel mean")
    axs[1].set_yscale("log")
    starts = pd.DataFrame(next(iter(rows.values()))).groupby("stage")["block"].min().iloc[1:]
    for ax in axs:  # the transition blocks, where the NF variance resets to 1 + α²
        for b in starts:
            ax.axvline(b - 0.5, color="gray", ls=":", lw=1)
        ax.legend(fontsize=8)
    fig.suptitle(f"Signal propagation at initialisation (Gaussian input, {resolution} px)", x=0.01, ha="left")
    fig.tight_layout()
    return fig
