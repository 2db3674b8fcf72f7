"""The paper's qualitative claims that the grids can test, each a predicate over a results table.

One function per claim, registered by its name (the id a grid file lists in ``report.claims``):
its docstring's first line is the claim, then the paper's words and where they are. It gets the
grid's results table (``study.analysis.results.table``) and the grid's ``aggregate.best`` and
returns a verdict and its evidence (numbers and run ids):

- PASS / FAIL: every cell the claim compares has enough finished seeds (all planned, or the
  grid's best-k) and the numbers decide it;
- INCONCLUSIVE: a cell has too few finished runs, or a difference the claim needs is within the
  tolerance ``TOL`` (the seed noise of a single short run).

A diverged run scores chance (or its recorded top-1) and counts as "unstable".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from study.analysis.aggregate import chance, column, complete, fmt, summarize
from study.analysis.columns import cfg, knob

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"
TOL = 0.01  # absolute top-1 (1 pp): smaller differences are noise for one short run


@dataclasses.dataclass(frozen=True)
class Claim:
    id: str
    func: Callable[[pd.DataFrame, int | None], tuple[str, str]]

    @property
    def text(self) -> str:
        return self.func.__doc__.strip().splitlines()[0]

    @property
    def source(self) -> str:
        lines = [ln.strip() for ln in self.func.__doc__.strip().splitlines()[1:] if ln.strip()]
        return " ".join(lines)


CLAIMS: dict[str, Claim] = {}  # by id; a grid file's ``report.claims`` names the ones it feeds


def claim(func: Callable) -> Callable:
    CLAIMS[func.__name__] = Claim(func.__name__, func)
    return func


class _Short(Exception):
    """A cell the claim needs has too few finished runs."""


def _cell(df: pd.DataFrame, best: int | None, what: str, mask: pd.Series) -> pd.Series:
    s = summarize(df[mask], ["label"], best)
    if s.empty:
        raise _Short(f"{what}: no run in the grid")
    row = s.iloc[0] if len(s) == 1 else summarize(df[mask].assign(label="all"), ["label"], best).iloc[0]
    if not complete(row, best):
        raise _Short(f"{what}: {fmt(row)}")
    return row


def _tol(*rows: pd.Series) -> float:
    """TOL, or the seeds' spread when several seeds were averaged and it is larger."""
    stds = [r["std"] for r in rows if r["n_used"] > 1 and np.isfinite(r["std"])]
    return max(TOL, float(np.sqrt(sum(s**2 for s in stds)))) if stds else TOL


def _bool(df: pd.DataFrame, key: str) -> pd.Series:
    return column(df, key, False).fillna(False).astype(bool)


def _num(df: pd.DataFrame, key: str) -> pd.Series:
    return pd.to_numeric(column(df, key), errors="coerce")


def _is(df: pd.DataFrame, label: str) -> pd.Series:
    return column(df, "label", "").astype(str) == label


def _stable(row: pd.Series, df: pd.DataFrame) -> bool:
    """No seed diverged and the mean did not collapse to chance (the paper's unstable runs)."""
    return not row["n_diverged"] and row["mean"] > float(chance(df).max()) + TOL


# --- Figure 2a: ablations/agc.yaml ------------------------------------------------------------

def _batches(df: pd.DataFrame, mask: pd.Series) -> tuple[int, int]:
    b = _num(df, cfg("batch_size"))[mask].dropna()
    if b.empty:
        raise _Short("no runs")
    return int(b.min()), int(b.max())


@claim
def agc_stable_at_largest_batch(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """With AGC, NF-ResNets train stably at the largest batch size (4096 in the paper).
    §4.1 / Figure 2a: "AGC ... allows us to train NF-ResNets stably with larger batch sizes
    (up to 4096)". Stable = no seed diverged and top-1 above chance + TOL (not collapsed).
    """
    nf_agc = _is(df, "nf-resnet") & _bool(df, cfg("agc"))
    _, big = _batches(df, nf_agc)
    row = _cell(df, best, f"AGC at batch {big}", nf_agc & (_num(df, cfg("batch_size")) == big))
    ok = _stable(row, df)
    return (PASS if ok else FAIL), f"NF-ResNet + AGC at batch {big}: {fmt(row)}"


@claim
def no_agc_unstable_at_largest_batch(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """Without AGC, NF-ResNets become unstable or fall behind AGC at the largest batch size.
    §4.1 / Figure 2a: NF-ResNets without clipping degrade and become unstable as the batch grows;
    AGC removes this. Holds when a no-AGC seed diverged or it trails AGC by more than TOL.
    """
    nf = _is(df, "nf-resnet")
    _, big = _batches(df, nf)
    at = nf & (_num(df, cfg("batch_size")) == big)
    off = _cell(df, best, f"no AGC at batch {big}", at & ~_bool(df, cfg("agc")))
    on = _cell(df, best, f"AGC at batch {big}", at & _bool(df, cfg("agc")))
    ok = off["n_diverged"] > 0 or off["mean"] < on["mean"] - _tol(on, off)
    return (PASS if ok else FAIL), f"batch {big}: no AGC {fmt(off)}; AGC {fmt(on)}"


@claim
def agc_matches_bn_at_largest_batch(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """NF-ResNet with AGC matches (or beats) the BN-ResNet at the largest batch size.
    §4.1 / Figure 2a: with AGC, NF-ResNets match the performance of batch-normalized ResNets
    at large batch sizes. Holds when top-1(NF + AGC) ≥ top-1(BN) − TOL.
    """
    _, big = _batches(df, _is(df, "nf-resnet"))
    at = _num(df, cfg("batch_size")) == big
    nf = _cell(df, best, f"AGC at batch {big}", _is(df, "nf-resnet") & _bool(df, cfg("agc")) & at)
    bn = _cell(df, best, f"BN-ResNet at batch {big}", _is(df, "bn-resnet") & at)
    ok = nf["mean"] >= bn["mean"] - _tol(nf, bn)
    return (PASS if ok else FAIL), f"batch {big}: NF + AGC {fmt(nf)}; BN {fmt(bn)}"


@claim
def no_agc_behind_bn_at_largest_batch(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """Without AGC, NF-ResNets fall behind BN-ResNets at the largest batch size.
    §3: NF-ResNets "perform worse than batch normalized networks for large batch sizes (4096
    or higher)". Holds when a no-AGC seed diverged or it trails BN by more than TOL.
    """
    _, big = _batches(df, _is(df, "nf-resnet"))
    at = _num(df, cfg("batch_size")) == big
    nf = _cell(df, best, f"no AGC at batch {big}", _is(df, "nf-resnet") & ~_bool(df, cfg("agc")) & at)
    bn = _cell(df, best, f"BN-ResNet at batch {big}", _is(df, "bn-resnet") & at)
    ok = nf["n_diverged"] > 0 or nf["mean"] < bn["mean"] - _tol(nf, bn)
    return (PASS if ok else FAIL), f"batch {big}: NF without AGC {fmt(nf)}; BN {fmt(bn)}"


# --- Figure 2b: ablations/agc-lambda.yaml -----------------------------------------------------

def _lambda_table(df: pd.DataFrame, best: int | None) -> pd.DataFrame:
    df = df.assign(lam=_num(df, cfg("agc_clipping")), batch=_num(df, cfg("batch_size")))
    s = summarize(df, ["batch", "lam"], best)
    short = s[~s.apply(complete, axis=1, best=best)] if len(s) else s
    if s.empty or len(s["batch"].unique()) < 2 or len(s["lam"].unique()) < 2:
        raise _Short("needs at least two batch sizes and two λ")
    if len(short):
        cells = [f"batch {r.batch:.0f} λ {r.lam:g}: {fmt(r)}" for _, r in short.iterrows()]
        more = f"; … {len(cells) - 3} more" if len(cells) > 3 else ""
        raise _Short(f"{len(cells)} of {len(s)} cells unfinished — " + "; ".join(cells[:3]) + more)
    return s


def _lambda_evidence(s: pd.DataFrame) -> str:
    return "; ".join(
        f"batch {b:.0f}: " + ", ".join(f"λ {r.lam:g} {r['mean']:.3f}" + (" (diverged)" if r.n_diverged else "")
                                       for _, r in g.iterrows())
        for b, g in s.groupby("batch"))


@claim
def larger_batches_need_smaller_lambda(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """Larger batches need a smaller clipping threshold λ.
    §4.1 / Figure 2b: "larger batch sizes require smaller clipping thresholds". Measured as the
    largest λ within TOL of each batch size's best top-1: it must not grow with the batch and
    must be smaller at the largest batch than at the smallest.
    """
    s = _lambda_table(df, best)
    workable = {b: g.loc[g["mean"] >= g["mean"].max() - TOL, "lam"].max() for b, g in s.groupby("batch")}
    lams = [workable[b] for b in sorted(workable)]
    ok = all(a >= b for a, b in zip(lams, lams[1:])) and lams[-1] < lams[0]
    text = ", ".join(f"batch {b:.0f}: λ ≤ {workable[b]:g}" for b in sorted(workable))
    return (PASS if ok else FAIL), f"largest λ within {TOL:g} of the best: {text}. {_lambda_evidence(s)} " \
        f"[{','.join(s['run_ids'])}]"


@claim
def smallest_lambda_stable_at_every_batch(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """The smallest λ (0.01 in the paper) trains stably at every batch size.
    §5.1: "For batch sizes 1024 to 4096, set λ = 0.01"; App. D uses it at every batch size.
    Stable = no seed diverged and top-1 above chance + TOL at each batch size.
    """
    s = _lambda_table(df, best)
    low = s[s["lam"] == s["lam"].min()]
    ok = all(_stable(r, df) for _, r in low.iterrows())
    return (PASS if ok else FAIL), "; ".join(f"λ {r.lam:g}, batch {r.batch:.0f}: {fmt(r)}" for _, r in low.iterrows())


# --- §4.1 layer ablation: ablations/agc-layers.yaml ------------------------------------------

def _excluding(df: pd.DataFrame, best: int | None, globs: list[str]) -> pd.Series:
    return _cell(df, best, f"exclude {globs}", column(df, cfg("agc_exclude"), "").astype(str) == str(globs))


@claim
def not_clipping_classifier_is_better(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """Not clipping the final linear layer is better than clipping every layer.
    §4.1: "it is always better not to clip the final linear layer". INCONCLUSIVE when the two
    differ by less than TOL.
    """
    base = _excluding(df, best, [])
    head = _excluding(df, best, ["head/kernel"])
    tol, diff = _tol(base, head), head["mean"] - base["mean"]
    verdict = PASS if diff > tol else FAIL if diff < -tol else INCONCLUSIVE
    return verdict, f"classifier unclipped {fmt(head)}; every layer clipped {fmt(base)}; Δ {diff:+.3f} (tolerance {tol:.3f})"


@claim
def first_conv_can_go_unclipped(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """The first (stem) convolution can go unclipped without losing accuracy.
    §4.1: "we can often get away without clipping the initial convolution". Holds when leaving
    the stem unclipped stays within TOL of clipping it (classifier unclipped in both).
    """
    ref = _excluding(df, best, ["head/kernel"])
    stem = _excluding(df, best, ["head/kernel", "stem/*"])
    ok = not stem["n_diverged"] and stem["mean"] >= ref["mean"] - _tol(ref, stem)
    return (PASS if ok else FAIL), f"stem unclipped {fmt(stem)}; stem clipped {fmt(ref)}"


@claim
def every_stage_must_be_clipped(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """Every stage must be clipped: leaving one unclipped loses stability or accuracy.
    §4.1: "all four stages must be clipped to obtain stable training at batch size 4096".
    Holds when each stage-unclipped run diverged or trails the all-stages run by more than TOL.
    """
    ref = _excluding(df, best, ["head/kernel"])
    excl = column(df, cfg("agc_exclude"), "").astype(str)
    stages = sorted({e for e in excl.unique() if "stages/" in e})
    if not stages:
        raise _Short("no stage-unclipped run in the grid")
    rows = [(e, _cell(df, best, f"exclude {e}", excl == e)) for e in stages]
    ok = all(r["n_diverged"] > 0 or r["mean"] < ref["mean"] - _tol(ref, r) for _, r in rows)
    return (PASS if ok else FAIL), "; ".join(f"exclude {e}: {fmt(r)}" for e, r in rows) + f"; all stages clipped {fmt(ref)}"


# --- §5 depth and width: ablations/depth.yaml, ablations/width.yaml ---------------------------

@claim
def deeper_nfnet_is_more_accurate(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """Under the NFNet depth rule ([1,2,6,3]×N), the deeper network is more accurate.
    Table 3: top-1 rises with N from F0 (83.6) to F5 (86.0). INCONCLUSIVE within TOL.
    """
    rule = _is(df, "nfnet-rule")
    depth = _num(df, knob("depth"))
    d = depth[rule].dropna()
    if d.nunique() < 2:
        raise _Short("needs two depths under the nfnet rule")
    lo = _cell(df, best, f"depth {d.min():g}", rule & (depth == d.min()))
    hi = _cell(df, best, f"depth {d.max():g}", rule & (depth == d.max()))
    tol, diff = _tol(lo, hi), hi["mean"] - lo["mean"]
    verdict = PASS if diff > tol else FAIL if diff < -tol else INCONCLUSIVE
    return verdict, f"N = {d.max():g}: {fmt(hi)}; N = {d.min():g}: {fmt(lo)}; Δ {diff:+.3f}"


@claim
def nfnet_width_pattern_not_worse(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """The NFNet width pattern loses no accuracy against ResNet doubling at each width multiplier.
    Table 2: "+ Modified Width" raises F0 from 80.4 to 80.9 top-1 (F1 +0.1, F2/F3 ±0).
    """
    pattern = column(df, knob("width_pattern"), "").astype(str)
    mult = _num(df, knob("width_mult"))
    mults = sorted(mult.dropna().unique())
    if not mults:
        raise _Short("no width multipliers in the grid")
    parts, ok = [], True
    for m in mults:
        nf = _cell(df, best, f"nfnet ×{m:g}", (pattern == "nfnet") & (mult == m))
        rn = _cell(df, best, f"resnet ×{m:g}", (pattern == "resnet") & (mult == m))
        ok &= bool(nf["mean"] >= rn["mean"] - _tol(nf, rn))
        parts.append(f"×{m:g}: nfnet {fmt(nf)} vs resnet {fmt(rn)}")
    return (PASS if ok else FAIL), "; ".join(parts)


def check(tables: Mapping[str, pd.DataFrame], best: Mapping[str, int | None],
          claims_of: Mapping[str, list[str]]) -> pd.DataFrame:
    """The verdict of every claim each grid declares (``claims_of[grid]``, its file's
    ``report.claims``): id, claim, source, grid, verdict, evidence."""
    rows = []
    for grid, ids in claims_of.items():
        df = tables.get(grid)
        for cid in ids:
            c = CLAIMS[cid]
            if df is None or df.empty:
                verdict, evidence = INCONCLUSIVE, f"grid {grid!r}: no runs at this scale"
            else:
                try:
                    verdict, evidence = c.func(df, best.get(grid))
                except _Short as e:
                    verdict, evidence = INCONCLUSIVE, f"too few finished runs — {e}"
                except Exception as e:  # noqa: BLE001 — an unexpected table is reported, not fatal
                    verdict, evidence = INCONCLUSIVE, f"could not evaluate: {type(e).__name__}: {e}"
            rows.append(dict(id=c.id, claim=c.text, source=c.source, grid=grid, verdict=verdict,
                             evidence=evidence))
    return pd.DataFrame(rows, columns=["id", "claim", "source", "grid", "verdict", "evidence"])
