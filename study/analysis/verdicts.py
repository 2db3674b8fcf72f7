"""How a claim becomes a verdict: the vocabulary, the checks on the cells a claim compares, and
the registry of claims (:mod:`study.analysis.claims` holds the claims themselves).

- PASS / FAIL: every cell the claim compares has at least ``MIN_SEEDS`` finished seeds, and the
  bootstrap interval of each difference the claim needs (:mod:`study.analysis.intervals`)
  decides it: "A below B" holds when the interval of mean(A) − mean(B) lies below 0;
- INCONCLUSIVE: a cell has too few finished seeds, or an interval the claim needs includes 0;
- INVALID: the comparison itself is void: a reference cell did not train (within ``TRAINED`` of
  chance without diverging), or a compared run that did not diverge was still learning at its
  end (train loss down by more than ``STILL_FALLING`` over its last tenth). Never a PASS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import pandas as pd

from study.analysis import intervals
from study.analysis.aggregate import chance, column, complete, fmt, summarize

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


class Short(Exception):
    """A cell the claim needs has too few finished seeds."""


class Invalid(Exception):
    """The comparison is void (a reference that did not train, a run still learning)."""


def cell(df: pd.DataFrame, best: int | None, what: str, mask: pd.Series) -> pd.Series:
    """The summary of the runs under ``mask``, checked: enough seeds, none still learning."""
    s = summarize(df[mask], ["label"], best)
    if s.empty:
        raise Short(f"{what}: no run in the grid")
    row = s.iloc[0] if len(s) == 1 else summarize(df[mask].assign(label="all"), ["label"], best).iloc[0]
    if not complete(row, best) or row["n_finished"] < MIN_SEEDS:
        raise Short(f"{what}: {row['n_finished']} finished seed(s) of {row['n_runs']}, a verdict needs "
                    f"{MIN_SEEDS}: {fmt(row)}")
    done = df[mask & (column(df, "status", "") == "done")]
    falling = pd.to_numeric(column(done, "loss_tail_drop"), errors="coerce")
    if (falling > STILL_FALLING).any():
        raise Invalid(f"{what}: train loss still falling at the end (down {falling.max():.1%} over the "
                      f"last tenth of a run): undertrained, {fmt(row)}")
    return row


def reference(row: pd.Series, df: pd.DataFrame, what: str) -> pd.Series:
    """``row``, if the cell trained: a claim measured against an untrained reference is void."""
    if not row["n_diverged"] and row["mean"] <= float(chance(df).max()) + TRAINED:
        raise Invalid(f"{what} did not train (within {TRAINED:.0%} of chance): {fmt(row)}")
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
