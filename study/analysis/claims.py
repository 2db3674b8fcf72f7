"""The paper's qualitative claims that the grids can test, each a predicate over a results table.

One function per claim, registered by its name (the id a grid file lists in ``report.claims``):
its docstring's first line is the claim, then the paper's words and where they are. It gets the
grid's results table (``study.analysis.results.table``) and the grid's ``aggregate.best`` and
returns a verdict and its evidence (numbers, 95% intervals and run ids). How cells are checked
and differences decided (3 seeds, bootstrap intervals, INVALID references) is
:mod:`study.analysis.verdicts`. A diverged run scores chance (or its recorded top-1) and counts
as "unstable".
"""

from __future__ import annotations

import pandas as pd

from study.analysis import intervals
from study.analysis.aggregate import column, fmt
from study.analysis.columns import cfg, knob
from study.analysis.verdicts import (CLAIMS, FAIL, INCONCLUSIVE, INVALID, PASS, VERDICTS, Short, below,
                                     cell, check, claim, diff, flag, labelled, near_best, num, reference,
                                     NEGLIGIBLE, stable, unstable)

__all__ = ["CLAIMS", "FAIL", "INCONCLUSIVE", "INVALID", "PASS", "VERDICTS", "check"]


# --- Figure 2a: ablations/agc.yaml ------------------------------------------------------------

def _batches(df: pd.DataFrame, mask: pd.Series) -> tuple[int, int]:
    b = num(df, cfg("batch_size"))[mask].dropna()
    if b.empty:
        raise Short("no runs")
    return int(b.min()), int(b.max())


def _largest(df: pd.DataFrame) -> tuple[int, pd.Series]:
    """The largest NF-ResNet batch and the mask of the NF-ResNet runs there."""
    _, big = _batches(df, labelled(df, "nf-resnet"))
    return big, labelled(df, "nf-resnet") & (num(df, cfg("batch_size")) == big)


def _agc(df: pd.DataFrame, best: int | None, big: int, nf: pd.Series, *, level: bool = True) -> pd.Series:
    return cell(df, best, f"NF-ResNet + AGC at batch {big}", nf & flag(df, cfg("agc")), level=level)


def _no_agc(df: pd.DataFrame, best: int | None, big: int, nf: pd.Series) -> pd.Series:
    return cell(df, best, f"NF-ResNet without AGC at batch {big}", nf & ~flag(df, cfg("agc")))


def _bn(df: pd.DataFrame, best: int | None, big: int) -> pd.Series:
    """The BN-ResNet at ``big``: trained and within the spread of its best batch. Every claim at
    the largest batch needs it, as the check that the protocol gives that batch enough steps."""
    what = f"BN-ResNet at batch {big}"
    at = labelled(df, "bn-resnet") & (num(df, cfg("batch_size")) == big)
    bn = reference(cell(df, best, what, at), df, what)
    return near_best(bn, df, labelled(df, "bn-resnet"), cfg("batch_size"), what)


@claim
def agc_stable_at_largest_batch(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """With AGC, NF-ResNets train stably at the largest batch size (4096 in the paper).
    §4.1 / Figure 2a: "AGC ... allows us to train NF-ResNets stably with larger batch sizes
    (up to 4096)". Stable = no seed diverged and top-1 above chance + 5 pp (not collapsed).
    """
    big, nf = _largest(df)
    bn = _bn(df, best, big)
    on = _agc(df, best, big, nf, level=False)  # stability: a divergence or a collapse, not a level
    return (PASS if stable(on, df) else FAIL), f"NF-ResNet + AGC at batch {big}: {fmt(on)}; BN {fmt(bn)}"


@claim
def no_agc_unstable_at_largest_batch(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """Without AGC, NF-ResNets become unstable or fall behind AGC at the largest batch size.
    §4.1 / Figure 2a: NF-ResNets without clipping degrade and become unstable as the batch grows;
    AGC removes this. Holds when a no-AGC seed diverged or its top-1 is below AGC's (95% interval).
    """
    big, nf = _largest(df)
    _bn(df, best, big)
    off = _no_agc(df, best, big, nf)
    # A divergence decides it; AGC's cell must then have trained, its level is not compared.
    on = reference(_agc(df, best, big, nf, level=not off["n_diverged"]), df, f"NF-ResNet + AGC at batch {big}")
    ok = off["n_diverged"] > 0 or below(off, on)
    return (PASS if ok else FAIL), f"batch {big}: no AGC {fmt(off)}; AGC {fmt(on)}; Δ {diff(off, on)}"


@claim
def agc_matches_bn_at_largest_batch(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """NF-ResNet with AGC matches (or beats) the BN-ResNet at the largest batch size.
    §4.1 / Figure 2a: with AGC, NF-ResNets match the performance of batch-normalized ResNets
    at large batch sizes. Holds unless top-1(NF + AGC) is below BN's (95% interval).
    """
    big, nf = _largest(df)
    bn, on = _bn(df, best, big), _agc(df, best, big, nf)
    return (FAIL if below(on, bn) else PASS), f"batch {big}: NF + AGC {fmt(on)}; BN {fmt(bn)}; Δ {diff(on, bn)}"


@claim
def no_agc_behind_bn_at_largest_batch(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """Without AGC, NF-ResNets fall behind BN-ResNets at the largest batch size.
    §3: NF-ResNets "perform worse than batch normalized networks for large batch sizes (4096
    or higher)". Holds when a no-AGC seed diverged or its top-1 is below BN's (95% interval).
    """
    big, nf = _largest(df)
    bn, off = _bn(df, best, big), _no_agc(df, best, big, nf)
    ok = off["n_diverged"] > 0 or below(off, bn)
    return (PASS if ok else FAIL), f"batch {big}: NF without AGC {fmt(off)}; BN {fmt(bn)}; Δ {diff(off, bn)}"


@claim
def agc_little_benefit_at_small_batch(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """AGC gives little benefit at small batch sizes; its benefit is at the large ones.
    §4.1: AGC's benefit is at large batch sizes; at small batch sizes NF-ResNets train well
    without it. Holds when, at the smallest batch, AGC beats no AGC by under NEGLIGIBLE (1 pp,
    mean) and its benefit there is smaller than at the largest batch (95% interval, or a no-AGC
    seed diverged).
    """
    small, big = _batches(df, labelled(df, "nf-resnet"))
    if small == big:
        raise Short("needs two batch sizes")
    nf, batch, agc = labelled(df, "nf-resnet"), num(df, cfg("batch_size")), flag(df, cfg("agc"))
    on_s = reference(cell(df, best, f"NF-ResNet + AGC at batch {small}", nf & (batch == small) & agc), df,
                     f"NF-ResNet + AGC at batch {small}")
    off_s = cell(df, best, f"NF-ResNet without AGC at batch {small}", nf & (batch == small) & ~agc)
    off_b = cell(df, best, f"NF-ResNet without AGC at batch {big}", nf & (batch == big) & ~agc)
    # A no-AGC divergence at the largest batch decides "grows"; AGC's level there is read otherwise.
    on_b = cell(df, best, f"NF-ResNet + AGC at batch {big}", nf & (batch == big) & agc,
                level=not off_b["n_diverged"])
    gain_small = diff(on_s, off_s)
    grows = off_b["n_diverged"] > 0 or intervals.difference_of_differences(
        on_b["scores"], off_b["scores"], on_s["scores"], off_s["scores"]).above_zero
    ok = gain_small.estimate < NEGLIGIBLE and grows
    return (PASS if ok else FAIL), (f"AGC − no AGC at batch {small}: {gain_small} ({fmt(on_s)} vs {fmt(off_s)}); "
                                    f"at batch {big}: {diff(on_b, off_b)} ({fmt(on_b)} vs {fmt(off_b)})")


# --- Figure 2b: ablations/agc-lambda.yaml -----------------------------------------------------

def _lambda_cells(df: pd.DataFrame, best: int | None) -> dict[float, dict[float, pd.Series]]:
    """{batch: {λ: cell}}, every cell checked; each batch's best λ must have trained."""
    lam, batch = num(df, cfg("agc_clipping")), num(df, cfg("batch_size"))
    if batch.nunique() < 2 or lam.nunique() < 2:
        raise Short("needs at least two batch sizes and two λ")
    cells = {b: {lv: cell(df, best, f"batch {b:.0f} λ {lv:g}", (batch == b) & (lam == lv))
                 for lv in sorted(lam[batch == b].dropna().unique())}
             for b in sorted(batch.dropna().unique())}
    for b, row in cells.items():
        top = max(row, key=lambda lv: row[lv]["mean"])
        reference(row[top], df, f"the best λ ({top:g}) at batch {b:.0f}")
    return cells


def _lambda_evidence(cells: dict) -> str:
    return "; ".join(f"batch {b:.0f}: " + ", ".join(f"λ {lv:g} {r['mean']:.3f}" + (" (diverged)" if r["n_diverged"] else "")
                                                    for lv, r in row.items()) for b, row in cells.items())


@claim
def larger_batches_need_smaller_lambda(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """Larger batches need a smaller clipping threshold λ.
    §4.1 / Figure 2b: "larger batch sizes require smaller clipping thresholds". Measured as the
    largest λ not below each batch size's best λ (95% interval): it must not grow with the batch
    and must be smaller at the largest batch than at the smallest.
    """
    cells = _lambda_cells(df, best)
    workable = {}
    for b, row in cells.items():
        top = row[max(row, key=lambda lv: row[lv]["mean"])]
        workable[b] = max(lv for lv, r in row.items() if r is top or not below(r, top))
    lams = [workable[b] for b in sorted(workable)]
    ok = all(a >= c for a, c in zip(lams, lams[1:])) and lams[-1] < lams[0]
    text = ", ".join(f"batch {b:.0f}: λ ≤ {workable[b]:g}" for b in sorted(workable))
    ids = ",".join(r["run_ids"] for row in cells.values() for r in row.values())
    return (PASS if ok else FAIL), f"largest λ not below the best: {text}. {_lambda_evidence(cells)} [{ids}]"


@claim
def smallest_lambda_stable_at_every_batch(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """The smallest λ (0.01 in the paper) trains stably at every batch size.
    §5.1: "For batch sizes 1024 to 4096, set λ = 0.01"; App. D uses it at every batch size.
    Stable = no seed diverged and top-1 above chance + 5 pp at each batch size.
    """
    cells = _lambda_cells(df, best)
    low = {b: row[min(row)] for b, row in cells.items()}
    ok = all(stable(r, df) for r in low.values())
    return (PASS if ok else FAIL), "; ".join(f"λ {min(cells[b]):g}, batch {b:.0f}: {fmt(r)}" for b, r in low.items())


# --- §4.1 layer ablation: ablations/agc-layers.yaml ------------------------------------------

def _excluding(df: pd.DataFrame, best: int | None, globs: list[str], *, level: bool = True) -> pd.Series:
    return cell(df, best, f"exclude {globs}", column(df, cfg("agc_exclude"), "").astype(str) == str(globs),
                level=level)


@claim
def not_clipping_classifier_is_better(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """Not clipping the final linear layer is better than clipping every layer.
    §4.1: "it is always better not to clip the final linear layer". PASS when the 95% interval of
    the difference lies above 0; FAIL when it lies below +NEGLIGIBLE (no benefit of 1 pp or more is
    consistent with the seeds, whether the difference is about 0 or negative); INCONCLUSIVE otherwise.
    """
    base = _excluding(df, best, [])
    head = reference(_excluding(df, best, ["head/kernel"]), df, "classifier unclipped")
    d = diff(head, base)
    verdict = PASS if d.above_zero else FAIL if d.below(NEGLIGIBLE) else INCONCLUSIVE
    return verdict, f"classifier unclipped {fmt(head)}; every layer clipped {fmt(base)}; Δ {d}"


@claim
def first_conv_can_go_unclipped(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """The first (stem) convolution can go unclipped without losing accuracy.
    §4.1: "we can often get away without clipping the initial convolution". Holds unless leaving
    the stem unclipped makes a seed diverge or collapse to chance, or is below clipping it
    (classifier unclipped in both).
    """
    ref = reference(_excluding(df, best, ["head/kernel"]), df, "classifier unclipped")
    stem = _excluding(df, best, ["head/kernel", "stem/*"], level=False)
    if not unstable(stem):  # only then does the verdict read the stem cell's accuracy
        stem = _excluding(df, best, ["head/kernel", "stem/*"])
    ok = not unstable(stem) and not below(stem, ref)
    return (PASS if ok else FAIL), f"stem unclipped {fmt(stem)}; stem clipped {fmt(ref)}; Δ {diff(stem, ref)}"


@claim
def every_stage_must_be_clipped(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """Every stage must be clipped: leaving one unclipped loses stability or accuracy.
    §4.1: "all four stages must be clipped to obtain stable training at batch size 4096".
    Holds when each stage-unclipped cell has a seed that diverged or collapsed to chance, or is
    below the all-stages cell.
    """
    ref = reference(_excluding(df, best, ["head/kernel"]), df, "all stages clipped")
    excl = column(df, cfg("agc_exclude"), "").astype(str)
    stages = sorted({e for e in excl.unique() if "stages/" in e})
    if not stages:
        raise Short("no stage-unclipped run in the grid")
    rows = []
    for e in stages:
        r = cell(df, best, f"exclude {e}", excl == e, level=False)
        rows.append((e, r if unstable(r) else cell(df, best, f"exclude {e}", excl == e)))
    ok = all(unstable(r) or below(r, ref) for _, r in rows)
    return (PASS if ok else FAIL), "; ".join(f"exclude {e}: {fmt(r)}" for e, r in rows) + f"; all stages clipped {fmt(ref)}"


# --- §5 depth and width: ablations/depth.yaml, ablations/width.yaml ---------------------------

@claim
def deeper_nfnet_is_more_accurate(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """Under the NFNet depth rule ([1,2,6,3]×N), the deeper network is more accurate.
    Table 3: top-1 rises with N from F0 (83.6) to F5 (86.0). INCONCLUSIVE while the 95%
    interval of the difference includes 0.
    """
    rule = labelled(df, "nfnet-rule")
    depth = num(df, knob("depth"))
    d = depth[rule].dropna()
    if d.nunique() < 2:
        raise Short("needs two depths under the nfnet rule")
    lo = reference(cell(df, best, f"depth {d.min():g}", rule & (depth == d.min())), df, f"depth {d.min():g}")
    hi = cell(df, best, f"depth {d.max():g}", rule & (depth == d.max()))
    delta = diff(hi, lo)
    verdict = PASS if delta.above_zero else FAIL if delta.below_zero else INCONCLUSIVE
    return verdict, f"N = {d.max():g}: {fmt(hi)}; N = {d.min():g}: {fmt(lo)}; Δ {delta}"


@claim
def nfnet_width_pattern_not_worse(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """The NFNet width pattern loses no accuracy against ResNet doubling at each width multiplier.
    Table 2: "+ Modified Width" raises F0 from 80.4 to 80.9 top-1 (F1 +0.1, F2/F3 ±0). Holds
    unless the NFNet pattern is below ResNet doubling (95% interval) at some multiplier.
    """
    pattern = column(df, knob("width_pattern"), "").astype(str)
    mult = num(df, knob("width_mult"))
    mults = sorted(mult.dropna().unique())
    if not mults:
        raise Short("no width multipliers in the grid")
    parts, ok = [], True
    for m in mults:
        nf = cell(df, best, f"nfnet ×{m:g}", (pattern == "nfnet") & (mult == m))
        rn = reference(cell(df, best, f"resnet ×{m:g}", (pattern == "resnet") & (mult == m)), df, f"resnet ×{m:g}")
        ok &= not below(nf, rn)
        parts.append(f"×{m:g}: nfnet {fmt(nf)} vs resnet {fmt(rn)}; Δ {diff(nf, rn)}")
    return (PASS if ok else FAIL), "; ".join(parts)


# --- Latency: ablations/variants.yaml ---------------------------------------------------------

def _latency_cells(df: pd.DataFrame, label: str) -> pd.DataFrame:
    """Finished latency runs of ``label``: model, median, fastest and slowest timed step (ms)."""
    ok = labelled(df, label) & (column(df, "status", "") == "done")
    out = pd.DataFrame({"model": column(df, cfg("model"), "")[ok], "ms": num(df, "latency_ms")[ok],
                        "lo": num(df, "latency_min_ms")[ok], "hi": num(df, "latency_max_ms")[ok],
                        "run_id": column(df, "run_id", "")[ok]}).dropna(subset=["ms"])
    return out.sort_values("model").set_index("model")


@claim
def variant_latency_grows_as_table3(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """Training-step latency grows with the variant, F0 < F1 < … (Table 3's ordering).
    Table 3 / Figure 1: step latency rises from F0 to F6 (TPUv3: 73.3 → 2774.1 ms). Holds when
    each measured variant's fastest timed step is slower than the previous variant's slowest;
    the ratios to F0 are shown beside Table 3's TPUv3 and V100 ratios.
    """
    from study.analysis import published

    nf = _latency_cells(df, "nfnet")
    if len(nf) < 2 or "nfnet-f0" not in nf.index:
        raise Short("needs NFNet-F0 and at least one larger variant timed")
    paper = published.nfnets().assign(model=lambda t: t["paper_model"].str.lower().str.replace("+sam", ""))
    paper = paper.set_index("model")
    ordered = sorted(nf.index, key=lambda m: int(m.rsplit("f", 1)[1]))
    ok = all(nf.loc[b, "lo"] > nf.loc[a, "hi"] for a, b in zip(ordered, ordered[1:]))
    parts = []
    for m in ordered:
        ratio = nf.loc[m, "ms"] / nf.loc["nfnet-f0", "ms"]
        ref = [f"{col.split('_')[1].upper()} {paper.loc[m, col] / paper.loc['nfnet-f0', col]:.2f}×"
               for col in ("latency_tpuv3_ms", "latency_v100_ms")
               if m in paper.index and pd.notna(paper.loc[m, col])]
        parts.append(f"{m} {nf.loc[m, 'ms']:.0f} ms ({ratio:.2f}× F0; Table 3: {', '.join(ref) or 'not in Table 3'})")
    return (PASS if ok else FAIL), "; ".join(parts) + f" [{','.join(nf['run_id'])}]"


@claim
def bn_nfnet_slower_per_step(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """The BatchNorm version of an NFNet is slower per training step than the NF version.
    Table 6 ("−NF, + BN", TPUv3): 1.16–1.63× the NF step for F0–F3; §6 says 20–40% slower.
    Holds when, for every variant timed both ways, the BN version's fastest timed step is slower
    than the NF version's slowest; FAIL when its median is not slower.
    """
    nf, bn = _latency_cells(df, "nfnet"), _latency_cells(df, "nfnet-bn")
    both = [m for m in bn.index if m in nf.index]
    if not both:
        raise Short("no variant timed with both NF and BN")
    parts, verdict = [], PASS
    for m in both:
        if bn.loc[m, "ms"] <= nf.loc[m, "ms"]:
            verdict = FAIL
        elif bn.loc[m, "lo"] <= nf.loc[m, "hi"] and verdict == PASS:
            verdict = INCONCLUSIVE
        parts.append(f"{m}: BN {bn.loc[m, 'ms']:.0f} ms [{bn.loc[m, 'lo']:.0f}, {bn.loc[m, 'hi']:.0f}] vs NF "
                     f"{nf.loc[m, 'ms']:.0f} ms [{nf.loc[m, 'lo']:.0f}, {nf.loc[m, 'hi']:.0f}] = "
                     f"{bn.loc[m, 'ms'] / nf.loc[m, 'ms']:.2f}×")
    ids = ",".join(list(nf.loc[both, "run_id"]) + list(bn.loc[both, "run_id"]))
    return verdict, "; ".join(parts) + f" (timed steps' range in brackets) [{ids}]"


# --- Signal propagation at initialisation: ablations/signal.yaml -------------------------------

@claim
def nf_signal_tracks_bn(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """At initialisation the NF-ResNet's residual stream has the BN-ResNet's variance profile.
    §3 (after Brock et al. 2021a, Figure 1): NF-ResNets are built so their signal propagation
    mimics BN-ResNets': the variance resets at each stage's transition block and grows within
    each stage. Holds when every seed of both models shows both, with 3+ seeds each.
    """
    done = column(df, "status", "") == "done"
    parts, ok = [], True
    for label in ("nf-resnet", "bn-resnet"):
        rows = df[labelled(df, label) & done]
        if len(rows) < 3:
            raise Short(f"{label}: {len(rows)} finished seed(s), a verdict needs 3")
        resets = column(rows, "resets_at_transitions", False).astype(bool)
        grows = column(rows, "grows_within_stages", False).astype(bool)
        ok &= bool(resets.all() and grows.all())
        last = intervals.mean(num(rows, "signal_var_last"))
        text = (f"{label} ({rows[cfg('model')].iloc[0]}): resets at transitions {int(resets.sum())}/{len(rows)}, "
                f"grows within stages {int(grows.sum())}/{len(rows)}, last-block variance "
                f"{last.estimate:.3f} [{last.lo:.3f}, {last.hi:.3f}], "
                f"mean shift max {num(rows, 'signal_mean_shift_max').mean():.3f}")
        off = num(rows, "signal_schedule_error_max").dropna()
        if len(off):  # NF models only: the deviation from the α² schedule they are designed for
            text += f", off the α² schedule by ≤ {off.max():.1%}"
        parts.append(text + f" [{','.join(rows['run_id'])}]")
    return (PASS if ok else FAIL), "; ".join(parts)
