"""Bootstrap intervals over seeds, the evidence a claim's verdict rests on.

Seeds are resampled with replacement (``scipy.stats.bootstrap``, percentile method, 9,999
resamples, a fixed generator so a report is reproducible to the digit). A difference is
decided when its 95% interval excludes 0; with one seed per cell there is no interval and
nothing is decided.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 9999


@dataclasses.dataclass(frozen=True)
class Interval:
    estimate: float
    lo: float
    hi: float

    def __str__(self) -> str:
        return f"{self.estimate:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}]"

    @property
    def above_zero(self) -> bool:
        return self.lo > 0

    @property
    def below_zero(self) -> bool:
        return self.hi < 0

    def below(self, margin: float) -> bool:
        """The whole interval under ``margin``: no difference that large upward (non-superiority)."""
        return self.hi < margin



def _bootstrap(data: tuple, statistic) -> tuple[float, float]:
    with warnings.catch_warnings():  # identical seeds: a zero-width interval, which is right
        warnings.simplefilter("ignore")
        res = stats.bootstrap(data, statistic, n_resamples=RESAMPLES, confidence_level=CONFIDENCE,
                              method="percentile", vectorized=True, rng=np.random.default_rng(0))
    lo, hi = res.confidence_interval
    return float(lo), float(hi)


def mean(scores: Sequence[float]) -> Interval | None:
    """The mean over seeds and its interval (None with fewer than 2 seeds)."""
    x = np.asarray(scores, float)
    if len(x) < 2:
        return None
    lo, hi = _bootstrap((x,), lambda a, axis: np.mean(a, axis=axis))
    return Interval(float(x.mean()), lo, hi)


def difference(a: Sequence[float], b: Sequence[float]) -> Interval | None:
    """mean(a) − mean(b) and its interval, seeds of each resampled independently (None when a
    side has fewer than 2 seeds)."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    if len(x) < 2 or len(y) < 2:
        return None
    lo, hi = _bootstrap((x, y), lambda p, q, axis: np.mean(p, axis=axis) - np.mean(q, axis=axis))
    return Interval(float(x.mean() - y.mean()), lo, hi)


def difference_of_differences(a: Sequence[float], b: Sequence[float], c: Sequence[float],
                              d: Sequence[float]) -> Interval | None:
    """(mean(a) − mean(b)) − (mean(c) − mean(d)) and its interval, each cell's seeds resampled
    independently: whether an effect (a over b) is larger than another (c over d)."""
    xs = [np.asarray(v, float) for v in (a, b, c, d)]
    if any(len(x) < 2 for x in xs):
        return None
    lo, hi = _bootstrap(tuple(xs), lambda p, q, r, s, axis: (np.mean(p, axis=axis) - np.mean(q, axis=axis))
                        - (np.mean(r, axis=axis) - np.mean(s, axis=axis)))
    m = [x.mean() for x in xs]
    return Interval(float((m[0] - m[1]) - (m[2] - m[3])), lo, hi)
