"""The paper's qualitative claims that the grids can test, each a predicate over a results table.

One function per claim, registered by its name (the id a grid file lists in ``report.claims``):
its docstring's first line is the claim, then the paper's words and where they are. It gets the
grid's results table (``study.analysis.results.table``) and the grid's ``aggregate.best`` and
returns a verdict and its evidence (numbers, 95% intervals and run ids):

- PASS / FAIL: every cell the claim compares has at least ``MIN_SEEDS`` finished seeds, and the
  bootstrap interval of each difference the claim needs (:mod:`study.analysis.intervals`)
  decides it: "A above B" holds when the interval of mean(A) − mean(B) lies above 0;
- INCONCLUSIVE: a cell has too few finished seeds, or an interval the claim needs includes 0;
- INVALID: the comparison itself is void: a reference cell did not train (within ``TRAINED`` of
  chance without diverging), or a compared run that did not diverge was still learning at its
  end (train loss down by more than ``STILL_FALLING`` over its last tenth). Never a PASS.

A diverged run scores chance (or its recorded top-1) and counts as "unstable".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import pandas as pd

from study.analysis import intervals
from study.analysis.aggregate import chance, column, complete, fmt, summarize
from study.analysis.columns import cfg, knob

PASS, FAIL, INCONCLUSIVE, INVALID = "PASS", "FAIL", "INCONCLUSIVE", "INVALID"
VERDICTS = (PASS, FAIL, INCONCLUSIVE, INVALID)
MIN_SEEDS = 3  # finished seeds per compared cell before anything is decided
TRAINED = 0.05  # a cell whose mean top-1 is within 5 pp of chance did not train
STILL_FALLING = 0.02  # relative train-loss drop over the last tenth of a run that is not over


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
    """A cell the claim needs has too few finished seeds."""


class _Invalid(Exception):
    """The comparison is void (a reference that did not train, a run still learning)."""


def _cell(df: pd.DataFrame, best: int | None, what: str, mask: pd.Series) -> pd.Series:
    """The summary of the runs under ``mask``, checked: enough seeds, none still learning."""
    s = summarize(df[mask], ["label"], best)
    if s.empty:
        raise _Short(f"{what}: no run in the grid")
    row = s.iloc[0] if len(s) == 1 else summarize(df[mask].assign(label="all"), ["label"], best).iloc[0]
    if not complete(row, best) or row["n_finished"] < MIN_SEEDS:
        raise _Short(f"{what}: {row['n_finished']} finished seed(s) of {row['n_runs']}, a verdict needs "
                     f"{MIN_SEEDS}: {fmt(row)}")
    done = df[mask & (column(df, "status", "") == "done")]
    falling = pd.to_numeric(column(done, "loss_tail_drop"), errors="coerce")
    if (falling > STILL_FALLING).any():
        raise _Invalid(f"{what}: train loss still falling at the end (down {falling.max():.1%} over the "
                       f"last tenth of a run): undertrained, {fmt(row)}")
    return row


def _reference(row: pd.Series, df: pd.DataFrame, what: str) -> pd.Series:
    """``row``, if the cell trained: a claim measured against an untrained reference is void."""
    if not row["n_diverged"] and row["mean"] <= float(chance(df).max()) + TRAINED:
        raise _Invalid(f"{what} did not train (within {TRAINED:.0%} of chance): {fmt(row)}")
    return row


def _diff(a: pd.Series, b: pd.Series) -> intervals.Interval:
    return intervals.difference(a["scores"], b["scores"])


def _above(a: pd.Series, b: pd.Series) -> bool:
    """mean(a) is above mean(b): the 95% interval of the difference lies above 0."""
    return _diff(a, b).above_zero


def _below(a: pd.Series, b: pd.Series) -> bool:
    return _diff(a, b).below_zero


def _bool(df: pd.DataFrame, key: str) -> pd.Series:
    return column(df, key, False).fillna(False).astype(bool)


def _num(df: pd.DataFrame, key: str) -> pd.Series:
    return pd.to_numeric(column(df, key), errors="coerce")


def _is(df: pd.DataFrame, label: str) -> pd.Series:
    return column(df, "label", "").astype(str) == label


def _stable(row: pd.Series, df: pd.DataFrame) -> bool:
    """No seed diverged and the mean did not collapse to chance (the paper's unstable runs)."""
    return not row["n_diverged"] and row["mean"] > float(chance(df).max()) + TRAINED


# --- Figure 2a: ablations/agc.yaml ------------------------------------------------------------

def _batches(df: pd.DataFrame, mask: pd.Series) -> tuple[int, int]:
    b = _num(df, cfg("batch_size"))[mask].dropna()
    if b.empty:
        raise _Short("no runs")
    return int(b.min()), int(b.max())


def _fig2a(df: pd.DataFrame, best: int | None) -> tuple[int, pd.Series, pd.Series, pd.Series]:
    """The largest batch and its three cells (AGC, no AGC, BN); the BN-ResNet is the reference."""
    _, big = _batches(df, _is(df, "nf-resnet"))
    at = _num(df, cfg("batch_size")) == big
    nf = _is(df, "nf-resnet") & at
    on = _cell(df, best, f"NF-ResNet + AGC at batch {big}", nf & _bool(df, cfg("agc")))
    off = _cell(df, best, f"NF-ResNet without AGC at batch {big}", nf & ~_bool(df, cfg("agc")))
    bn = _reference(_cell(df, best, f"BN-ResNet at batch {big}", _is(df, "bn-resnet") & at), df,
                    f"BN-ResNet at batch {big}")
    return big, on, off, bn


@claim
def agc_stable_at_largest_batch(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """With AGC, NF-ResNets train stably at the largest batch size (4096 in the paper).
    §4.1 / Figure 2a: "AGC ... allows us to train NF-ResNets stably with larger batch sizes
    (up to 4096)". Stable = no seed diverged and top-1 above chance + 5 pp (not collapsed).
    """
    big, on, _, bn = _fig2a(df, best)
    return (PASS if _stable(on, df) else FAIL), f"NF-ResNet + AGC at batch {big}: {fmt(on)}; BN {fmt(bn)}"


@claim
def no_agc_unstable_at_largest_batch(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """Without AGC, NF-ResNets become unstable or fall behind AGC at the largest batch size.
    §4.1 / Figure 2a: NF-ResNets without clipping degrade and become unstable as the batch grows;
    AGC removes this. Holds when a no-AGC seed diverged or its top-1 is below AGC's (95% interval).
    """
    big, on, off, _ = _fig2a(df, best)
    _reference(on, df, f"NF-ResNet + AGC at batch {big}")
    ok = off["n_diverged"] > 0 or _below(off, on)
    return (PASS if ok else FAIL), f"batch {big}: no AGC {fmt(off)}; AGC {fmt(on)}; Δ {_diff(off, on)}"


@claim
def agc_matches_bn_at_largest_batch(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """NF-ResNet with AGC matches (or beats) the BN-ResNet at the largest batch size.
    §4.1 / Figure 2a: with AGC, NF-ResNets match the performance of batch-normalized ResNets
    at large batch sizes. Holds unless top-1(NF + AGC) is below BN's (95% interval).
    """
    big, on, _, bn = _fig2a(df, best)
    return (FAIL if _below(on, bn) else PASS), f"batch {big}: NF + AGC {fmt(on)}; BN {fmt(bn)}; Δ {_diff(on, bn)}"


@claim
def no_agc_behind_bn_at_largest_batch(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """Without AGC, NF-ResNets fall behind BN-ResNets at the largest batch size.
    §3: NF-ResNets "perform worse than batch normalized networks for large batch sizes (4096
    or higher)". Holds when a no-AGC seed diverged or its top-1 is below BN's (95% interval).
    """
    big, _, off, bn = _fig2a(df, best)
    ok = off["n_diverged"] > 0 or _below(off, bn)
    return (PASS if ok else FAIL), f"batch {big}: NF without AGC {fmt(off)}; BN {fmt(bn)}; Δ {_diff(off, bn)}"


# --- Figure 2b: ablations/agc-lambda.yaml -----------------------------------------------------

def _lambda_cells(df: pd.DataFrame, best: int | None) -> dict[float, dict[float, pd.Series]]:
    """{batch: {λ: cell}}, every cell checked; each batch's best λ must have trained."""
    lam, batch = _num(df, cfg("agc_clipping")), _num(df, cfg("batch_size"))
    if batch.nunique() < 2 or lam.nunique() < 2:
        raise _Short("needs at least two batch sizes and two λ")
    cells = {b: {lv: _cell(df, best, f"batch {b:.0f} λ {lv:g}", (batch == b) & (lam == lv))
                 for lv in sorted(lam[batch == b].dropna().unique())}
             for b in sorted(batch.dropna().unique())}
    for b, row in cells.items():
        top = max(row, key=lambda lv: row[lv]["mean"])
        _reference(row[top], df, f"the best λ ({top:g}) at batch {b:.0f}")
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
        workable[b] = max(lv for lv, r in row.items() if r is top or not _below(r, top))
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
    ok = all(_stable(r, df) for r in low.values())
    return (PASS if ok else FAIL), "; ".join(f"λ {min(cells[b]):g}, batch {b:.0f}: {fmt(r)}" for b, r in low.items())


# --- §4.1 layer ablation: ablations/agc-layers.yaml ------------------------------------------

def _excluding(df: pd.DataFrame, best: int | None, globs: list[str]) -> pd.Series:
    return _cell(df, best, f"exclude {globs}", column(df, cfg("agc_exclude"), "").astype(str) == str(globs))


@claim
def not_clipping_classifier_is_better(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """Not clipping the final linear layer is better than clipping every layer.
    §4.1: "it is always better not to clip the final linear layer". INCONCLUSIVE while the 95%
    interval of the difference includes 0.
    """
    base = _excluding(df, best, [])
    head = _reference(_excluding(df, best, ["head/kernel"]), df, "classifier unclipped")
    d = _diff(head, base)
    verdict = PASS if d.above_zero else FAIL if d.below_zero else INCONCLUSIVE
    return verdict, f"classifier unclipped {fmt(head)}; every layer clipped {fmt(base)}; Δ {d}"


@claim
def first_conv_can_go_unclipped(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """The first (stem) convolution can go unclipped without losing accuracy.
    §4.1: "we can often get away without clipping the initial convolution". Holds unless leaving
    the stem unclipped diverges or is below clipping it (classifier unclipped in both).
    """
    ref = _reference(_excluding(df, best, ["head/kernel"]), df, "classifier unclipped")
    stem = _excluding(df, best, ["head/kernel", "stem/*"])
    ok = not stem["n_diverged"] and not _below(stem, ref)
    return (PASS if ok else FAIL), f"stem unclipped {fmt(stem)}; stem clipped {fmt(ref)}; Δ {_diff(stem, ref)}"


@claim
def every_stage_must_be_clipped(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """Every stage must be clipped: leaving one unclipped loses stability or accuracy.
    §4.1: "all four stages must be clipped to obtain stable training at batch size 4096".
    Holds when each stage-unclipped cell diverged or is below the all-stages cell.
    """
    ref = _reference(_excluding(df, best, ["head/kernel"]), df, "all stages clipped")
    excl = column(df, cfg("agc_exclude"), "").astype(str)
    stages = sorted({e for e in excl.unique() if "stages/" in e})
    if not stages:
        raise _Short("no stage-unclipped run in the grid")
    rows = [(e, _cell(df, best, f"exclude {e}", excl == e)) for e in stages]
    ok = all(r["n_diverged"] > 0 or _below(r, ref) for _, r in rows)
    return (PASS if ok else FAIL), "; ".join(f"exclude {e}: {fmt(r)}" for e, r in rows) + f"; all stages clipped {fmt(ref)}"


# --- §5 depth and width: ablations/depth.yaml, ablations/width.yaml ---------------------------

@claim
def deeper_nfnet_is_more_accurate(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """Under the NFNet depth rule ([1,2,6,3]×N), the deeper network is more accurate.
    Table 3: top-1 rises with N from F0 (83.6) to F5 (86.0). INCONCLUSIVE while the 95%
    interval of the difference includes 0.
    """
    rule = _is(df, "nfnet-rule")
    depth = _num(df, knob("depth"))
    d = depth[rule].dropna()
    if d.nunique() < 2:
        raise _Short("needs two depths under the nfnet rule")
    lo = _reference(_cell(df, best, f"depth {d.min():g}", rule & (depth == d.min())), df, f"depth {d.min():g}")
    hi = _cell(df, best, f"depth {d.max():g}", rule & (depth == d.max()))
    diff = _diff(hi, lo)
    verdict = PASS if diff.above_zero else FAIL if diff.below_zero else INCONCLUSIVE
    return verdict, f"N = {d.max():g}: {fmt(hi)}; N = {d.min():g}: {fmt(lo)}; Δ {diff}"


@claim
def nfnet_width_pattern_not_worse(df: pd.DataFrame, best: int | None) -> tuple[str, str]:
    """The NFNet width pattern loses no accuracy against ResNet doubling at each width multiplier.
    Table 2: "+ Modified Width" raises F0 from 80.4 to 80.9 top-1 (F1 +0.1, F2/F3 ±0). Holds
    unless the NFNet pattern is below ResNet doubling (95% interval) at some multiplier.
    """
    pattern = column(df, knob("width_pattern"), "").astype(str)
    mult = _num(df, knob("width_mult"))
    mults = sorted(mult.dropna().unique())
    if not mults:
        raise _Short("no width multipliers in the grid")
    parts, ok = [], True
    for m in mults:
        nf = _cell(df, best, f"nfnet ×{m:g}", (pattern == "nfnet") & (mult == m))
        rn = _reference(_cell(df, best, f"resnet ×{m:g}", (pattern == "resnet") & (mult == m)), df, f"resnet ×{m:g}")
        ok &= not _below(nf, rn)
        parts.append(f"×{m:g}: nfnet {fmt(nf)} vs resnet {fmt(rn)}; Δ {_diff(nf, rn)}")
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
                    verdict, evidence = INCONCLUSIVE, f"too few finished seeds — {e}"
                except _Invalid as e:
                    verdict, evidence = INVALID, f"invalid comparison — {e}"
                except Exception as e:  # noqa: BLE001 — an unexpected table is reported, not fatal
                    verdict, evidence = INCONCLUSIVE, f"could not evaluate: {type(e).__name__}: {e}"
            rows.append(dict(id=c.id, claim=c.text, source=c.source, grid=grid, verdict=verdict,
                             evidence=evidence))
    return pd.DataFrame(rows, columns=["id", "claim", "source", "grid", "verdict", "evidence"])
