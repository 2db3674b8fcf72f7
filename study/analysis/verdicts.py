"""How a claim becomes a verdict: the vocabulary, the checks on the cells a claim compares, and
the registry of claims (:mod:`study.analysis.claims` holds the claims themselves).

- PASS / FAIL: every cell the claim compares has at least ``MIN_SEEDS`` finished seeds, and the
  bootstrap interval of each difference the claim needs (:mod:`study.analysis.intervals`)
  decides it: "A below B" holds when the interval of mean(A) − mean(B) lies below 0;
- INCONCLUSIVE: a cell has too few finished seeds, or an interval the claim needs includes 0 (a
  claimed benefit whose interval lies below +``NEGLIGIBLE`` is a FAIL: it is absent here);
- INVALID: the comparison itself is void: a reference cell did not train (within ``TRAINED`` of
  chance without diverging, or more than ``REFERENCE_SPREAD`` below its own best batch size), or
  a run whose accuracy the verdict compares was still learning at its end (test top-1 up by more
  than ``STILL_LEARNING`` over its last quarter). Never a PASS. Only the cells a verdict reads
  can void it: a claim decided by a divergence does not read the other cell's accuracy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import pandas as pd

from study.analysis import intervals
from study.analysis.aggregate import TRAINED, chance, column, complete, fmt, summarize

PASS, FAIL, INCONCLUSIVE, INVALID = "PASS", "FAIL", "INCONCLUSIVE", "INVALID"
VERDICTS = (PASS, FAIL, INCONCLUSIVE, INVALID)
MIN_SEEDS = 3  # finished seeds per compared cell before anything is decided
# A run whose test top-1 rose more than this over its last quarter had not reached its plateau: half
# the 3 pp the local protocol allows the BN reference between batch sizes. Under a cosine decay to 0
# the last quarter holds 2.5% of the schedule's learning rate, so a converged run gains < 1 pp there.
STILL_LEARNING = 0.015
# The BN reference must train at every batch size it is compared at: its mean within this of its
# best batch size's (issue 14's protocol; the paper's BN-ResNet-50 spans ~1 pp over 256..4096).
REFERENCE_SPREAD = 0.03
# A benefit smaller than this is none at the local scale: "little benefit" is a mean under it, and a
# claimed benefit whose whole 95% interval lies below +NEGLIGIBLE is absent (non-superiority).
NEGLIGIBLE = 0.01


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


class Short(Exception):
    """A cell the claim needs has too few finished seeds."""


class Invalid(Exception):
    """The comparison is void (a reference that did not train, a run still learning)."""


def cell(df: pd.DataFrame, best: int | None, what: str, mask: pd.Series, *, level: bool = True) -> pd.Series:
    """The summary of the runs under ``mask``, checked: enough seeds and, when the verdict
    compares the cell's accuracy (``level``), none still learning. More training can reorder
    accuracies, but it cannot undo a divergence nor pull a rising run back to chance, so a cell
    used only for those (``level=False``) is not voided by a run still learning."""
    s = summarize(df[mask], ["label"], best)
    if s.empty:
        raise Short(f"{what}: no run in the grid")
    row = s.iloc[0] if len(s) == 1 else summarize(df[mask].assign(label="all"), ["label"], best).iloc[0]
    if not complete(row, best) or row["n_finished"] < MIN_SEEDS:
        raise Short(f"{what}: {row['n_finished']} finished seed(s) of {row['n_runs']}, a verdict needs "
                    f"{MIN_SEEDS}: {fmt(row)}")
    done = df[mask & (column(df, "status", "") == "done")]
    gain = pd.to_numeric(column(done, "top1_tail_gain"), errors="coerce")
    if level and (gain > STILL_LEARNING).any():
        raise Invalid(f"{what}: still learning at the end (test top-1 up {100 * gain.max():.1f} pp over "
                      f"the last quarter of a run): undertrained, {fmt(row)}")
    return row


def reference(row: pd.Series, df: pd.DataFrame, what: str) -> pd.Series:
    """``row``, if the cell trained: a claim measured against an untrained reference is void."""
    if not row["n_diverged"] and row["mean"] <= float(chance(df).max()) + TRAINED:
        raise Invalid(f"{what} did not train (within {TRAINED:.0%} of chance): {fmt(row)}")
    return row


def near_best(row: pd.Series, df: pd.DataFrame, mask: pd.Series, by: str, what: str) -> pd.Series:
    """``row``, if its mean is within ``REFERENCE_SPREAD`` of the best cell of ``df[mask]`` grouped
    by ``by``: a reference far below its own best at this setting measures too few steps."""
    s = summarize(df[mask], [by])
    top = s.loc[s["mean"].idxmax()] if s["mean"].notna().any() else None
    if top is not None and row["mean"] < top["mean"] - REFERENCE_SPREAD:
        raise Invalid(f"{what} is {100 * (top['mean'] - row['mean']):.1f} pp below its best ({by} "
                      f"{top[by]:g}: {top['mean']:.3f}), more than {100 * REFERENCE_SPREAD:.0f} pp: "
                      f"too few steps for a reference, {fmt(row)}")
    return row


def diff(a: pd.Series, b: pd.Series) -> intervals.Interval:
    return intervals.difference(a["scores"], b["scores"])


def below(a: pd.Series, b: pd.Series) -> bool:
    return diff(a, b).below_zero


def flag(df: pd.DataFrame, key: str) -> pd.Series:
    return column(df, key, False).fillna(False).astype(bool)


def num(df: pd.DataFrame, key: str) -> pd.Series:
    return pd.to_numeric(column(df, key), errors="coerce")


def labelled(df: pd.DataFrame, label: str) -> pd.Series:
    return column(df, "label", "").astype(str) == label


def unstable(row: pd.Series) -> bool:
    """A seed diverged or collapsed to chance: a result more training cannot undo."""
    return bool(row["n_diverged"] or row["n_collapsed"])


def stable(row: pd.Series, df: pd.DataFrame) -> bool:
    """No seed diverged and the mean did not collapse to chance (the paper's unstable runs)."""
    return not row["n_diverged"] and row["mean"] > float(chance(df).max()) + TRAINED


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
                except Short as e:
                    verdict, evidence = INCONCLUSIVE, f"too few finished seeds — {e}"
                except Invalid as e:
                    verdict, evidence = INVALID, f"invalid comparison — {e}"
                except Exception as e:  # noqa: BLE001 — an unexpected table is reported, not fatal
                    verdict, evidence = INCONCLUSIVE, f"could not evaluate: {type(e).__name__}: {e}"
            rows.append(dict(id=c.id, claim=c.text, source=c.source, grid=grid, verdict=verdict,
                             evidence=evidence))
    return pd.DataFrame(rows, columns=["id", "claim", "source", "grid", "verdict", "evidence"])
