"""The report's figures, drawn like the paper's (seaborn on matplotlib, headless Agg).

Each function takes tidy tables and returns a Figure. Conventions shared by every plot: seeds are
a mean with its 95% bootstrap interval as the error bar (``study.aggregate.summarize``, the grid's best-k); a diverged run is a
red ✕ collapsed at its score (chance when it has no top-1), as the paper draws unstable runs at
the bottom of Figure 2; a cell with no finished run says "missing" on the axis instead of
silently dropping out; a figure with nothing to show is a placeholder naming what is missing.
"""

from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from study.analysis.aggregate import column, summarize  # noqa: E402
from study.analysis.columns import cfg, knob  # noqa: E402

sns.set_theme(style="whitegrid", context="paper", font_scale=1.1)
DIVERGED = dict(marker="X", s=90, color="crimson", zorder=5, label="diverged (collapsed)")

# Drawers a grid file can name in ``report.figure.draw``: name -> (function, needs finished runs).
# Each is called as ``f(table, best, tables=every grid's table, **the figure's own arguments)``
# and returns a Figure, or (Figure, a sentence appended to the caption).
FIGURES: dict[str, tuple] = {}


def drawer(name: str, needs_runs: bool = True):
    def register(func):
        FIGURES[name] = (func, needs_runs)
        return func
    return register


def placeholder(title: str, message: str) -> Figure:
    fig, ax = plt.subplots(figsize=(6.4, 2.4))
    ax.set_axis_off()
    ax.set_title(title, loc="left")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, color="dimgray", transform=ax.transAxes)
    return fig


def _ci(s: pd.DataFrame) -> np.ndarray:
    """Error bars: each cell's 95% bootstrap interval of the mean over seeds (none for one seed)."""
    lo = (s["mean"] - pd.to_numeric(s["lo"], errors="coerce")).fillna(0).clip(lower=0)
    hi = (pd.to_numeric(s["hi"], errors="coerce") - s["mean"]).fillna(0).clip(lower=0)
    return np.vstack([lo.to_numpy(float), hi.to_numpy(float)])


def _series(ax, s: pd.DataFrame, x: str, label: str, color, marker: str = "o") -> None:
    """One line of cell means with std bars; diverged cells as red ✕; unfinished cells 'missing'."""
    s = s.sort_values(x)
    ok = s[s["n_finished"] > 0]
    ax.errorbar(ok[x], ok["mean"], yerr=_ci(ok), color=color, marker=marker, capsize=3,
                label=label)
    div = ok[ok["n_diverged"] > 0]
    if len(div):
        ax.scatter(div[x], div["mean"], **{**DIVERGED, "label": None})
    for xv in s.loc[s["n_finished"] == 0, x]:
        ax.annotate("missing", (xv, 0), xycoords=("data", "axes fraction"), xytext=(0, 4),
                    textcoords="offset points", ha="center", fontsize=8, color=color, rotation=90)


def _legend_diverged(ax, cells: list[pd.DataFrame]) -> None:
    if any((c["n_diverged"] > 0).any() for c in cells if len(c)):
        ax.scatter([], [], **DIVERGED)
    ax.legend(fontsize=8)


def _log2_batches(ax, values) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted({int(v) for v in values if pd.notna(v)})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()


def _subset(df: pd.DataFrame, **eq) -> pd.DataFrame:
    mask = np.ones(len(df), bool)
    for key, value in eq.items():
        mask &= (column(df, key, None) == value).to_numpy(bool)
    return df[mask]


def _with_batch(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(batch=pd.to_numeric(column(df, cfg("batch_size")), errors="coerce"),
                     lam=pd.to_numeric(column(df, cfg("agc_clipping")), errors="coerce"))


def figure1(nfnets: pd.DataFrame, effnets: pd.DataFrame, measured: pd.DataFrame,
            reruns: pd.DataFrame) -> Figure:
    """Left: Table 3's top-1 vs TPUv3 step latency (the paper's Figure 1) with ImageNet reruns.
    Right: step latency per variant, Table 3 (TPUv3, V100) and this machine (hardware named)."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw=dict(width_ratios=[1.25, 1]))
    for df, name, color, prefix in ((nfnets, "NFNet (Table 3)", "C3", "F"), (effnets, "EfficientNet (Table 3)", "C0", "B")):
        ax.plot(df["latency_tpuv3_ms"], df["top1"], marker="o", color=color, label=name)
        for _, r in df.iterrows():
            ax.annotate(prefix + r["paper_model"].split("-")[1][1:], (r["latency_tpuv3_ms"], r["top1"]),
                        xytext=(4, -10), textcoords="offset points", fontsize=8, color=color)
    if len(reruns):
        ax.scatter(reruns["latency_tpuv3_ms"], reruns["top1"], marker="*", s=160, color="black", zorder=6,
                   label="ImageNet reruns (at the variant's TPUv3 latency)")
    ax.set(xlabel="training latency, ms per step (TPUv3 ×32, batch 32 per core)", ylabel="ImageNet top-1 (%)",
           title="Figure 1: top-1 vs training latency")
    ax.legend(loc="lower right", fontsize=8)

    names = [f"nfnet-f{i}" for i in range(8)]
    xs = np.arange(len(names))
    for col, label, color in (("latency_tpuv3_ms", "Table 3: TPUv3 ×32, bf16", "C3"),
                              ("latency_v100_ms", "Table 3: one V100, fp16", "C1")):
        y = nfnets.set_index("model")[col].reindex(names)
        bx.plot(xs, y, marker="o", color=color, label=label)
    if len(measured):
        from study.analysis.comparison import hardware_summary

        m = measured.groupby("model").last().reindex(names)
        bx.plot(xs, m["latency_ms"], marker="s", color="black", label=f"measured here:\n{hardware_summary(measured)}")
        missing = [x for x, v in zip(xs, m["latency_ms"]) if pd.isna(v)]
    else:
        missing = list(xs)
    for x in missing:
        bx.annotate("not measured", (x, 0), xycoords=("data", "axes fraction"), xytext=(0, 4),
                    textcoords="offset points", ha="center", fontsize=8, rotation=90, color="dimgray")
    bx.set_yscale("log")
    bx.set_xticks(xs, [n.replace("nfnet-", "").upper() for n in names])
    bx.set(xlabel="NFNet variant", ylabel="training step, ms (log)", title="Step latency: paper vs this machine")
    bx.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


@drawer("figure1", needs_runs=False)
def latency_vs_accuracy(df: pd.DataFrame, best: int | None, *, tables: dict, **_) -> tuple[Figure, str]:
    """Figure 1 from every grid's latency runs and ImageNet reruns (the paper's points always)."""
    from study.analysis import comparison, published

    measured = comparison.measured_latency(tables)
    fig = figure1(published.nfnets(), published.efficientnets(), measured, comparison.reruns(tables))
    return fig, f"Measured here: {comparison.hardware_summary(measured)}; not a V100 or TPUv3 number."


@drawer("figure2a")
def figure2a(df: pd.DataFrame, best: int | None, **_) -> Figure:
    """Top-1 vs batch size: NF-ResNet with and without AGC, and the BN-ResNet (Figure 2a)."""
    df = _with_batch(df)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    cells = []
    for sub, label, color in ((_subset(df, label="bn-resnet"), "BN-ResNet", "C0"),
                              (_subset(df, label="nf-resnet", **{cfg("agc"): False}), "NF-ResNet", "C1"),
                              (_subset(df, label="nf-resnet", **{cfg("agc"): True}), "NF-ResNet + AGC", "C2")):
        s = summarize(sub, ["batch"], best)
        if len(s):
            _series(ax, s, "batch", label, color)
            cells.append(s)
    _log2_batches(ax, df["batch"])
    ax.set(xlabel="batch size", ylabel="test top-1", title="Figure 2a: AGC vs batch size")
    _legend_diverged(ax, cells)
    fig.tight_layout()
    return fig


@drawer("figure2b")
def figure2b(df: pd.DataFrame, best: int | None, **_) -> Figure:
    """Top-1 vs clipping threshold λ, one line per batch size (Figure 2b)."""
    df = _with_batch(df)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    cells = []
    batches = sorted(df["batch"].dropna().unique())
    for color, b in zip(sns.color_palette("viridis", len(batches)), batches):
        s = summarize(df[df["batch"] == b], ["lam"], best)
        _series(ax, s, "lam", f"batch {b:.0f}", color)
        cells.append(s)
    ax.set_xscale("log")
    lams = sorted(df["lam"].dropna().unique())
    ax.set_xticks(lams, [f"{v:g}" for v in lams])
    ax.minorticks_off()
    ax.set(xlabel="clipping threshold λ", ylabel="test top-1", title="Figure 2b: λ per batch size")
    _legend_diverged(ax, cells)
    fig.tight_layout()
    return fig


def _unclipped(excluded: str) -> str:
    """``['head/kernel', 'stages/0/*']`` → ``classifier\n+ stages/0``."""
    globs = [g.strip(" '\"") for g in excluded.strip("[]").split(",") if g.strip(" '\"")]
    names = {"head/kernel": "classifier", "stem/*": "stem"}
    return "\n+ ".join(names.get(g, g.removesuffix("/*")) for g in globs) or "nothing\n(all clipped)"


@drawer("layers")
def layers(df: pd.DataFrame, best: int | None, **_) -> Figure:
    """§4.1 layer ablation: top-1 per set of unclipped layers; diverged bars hatched at chance."""
    df = df.assign(excluded=column(df, cfg("agc_exclude"), "").astype(str))
    s = summarize(df, ["excluded"], best)
    order = list(dict.fromkeys(df["excluded"]))  # the grid file's order
    s = s.set_index("excluded").reindex(order).reset_index()
    names = [_unclipped(e) for e in s["excluded"]]
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    colors = ["crimson" if d else "C2" for d in s["n_diverged"].fillna(0)]
    bars = ax.bar(names, s["mean"].fillna(0), yerr=_ci(s.fillna({"mean": 0})), color=colors, capsize=3)
    for bar, (_, r) in zip(bars, s.iterrows()):
        text = "missing" if not r["n_finished"] else ("diverged" if r["n_diverged"] else f"{r['mean']:.3f}")
        if r["n_diverged"]:
            bar.set_hatch("//")
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, 3),
                    textcoords="offset points", ha="center", fontsize=8)
    ax.set(xlabel="left unclipped by AGC", ylabel="test top-1", title="§4.1: which layers AGC must clip")
    fig.tight_layout()
    return fig


@drawer("scaling")
def scaling(df: pd.DataFrame, best: int | None, *, knob_name: str, title: str, hue: str | None = None,
            **_) -> Figure:
    """Depth or width ablation: top-1 against MACs per rule / pattern (``hue``, a model knob;
    default: the block label), points labelled by the model knob ``knob_name``."""
    hue_col = knob(hue) if hue else "label"
    df = df.assign(knob=column(df, knob(knob_name)).astype(str), hue=column(df, hue_col, "").astype(str),
                   gmacs=pd.to_numeric(column(df, "macs"), errors="coerce") / 1e6)
    s = summarize(df, ["hue", "knob", "gmacs"], best)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for color, (name, g) in zip(sns.color_palette("tab10"), s.groupby("hue")):
        _series(ax, g, "gmacs", name, color)
        for _, r in g.iterrows():
            if r["n_finished"]:
                ax.annotate(f"{knob_name}={r['knob']}", (r["gmacs"], r["mean"]), xytext=(4, 4),
                            textcoords="offset points", fontsize=8)
    ax.set_xscale("log")
    ax.set(xlabel="MACs per image (millions, log)", ylabel="test top-1", title=title)
    _legend_diverged(ax, [s])
    fig.tight_layout()
    return fig
