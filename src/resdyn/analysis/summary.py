"""Summaries over seeds: means with Student-t intervals, and store rows grouped by settings."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["MeanCI", "WelchTost", "group_rows", "mean_ci", "overlap", "welch_tost"]


@dataclass(frozen=True)
class MeanCI:
    """Mean of n values with the two-sided ``level`` Student-t interval mean +- t s / sqrt(n)
    (s the sample standard deviation); with n = 1 the interval is the point."""

    mean: float
    lo: float
    hi: float
    n: int
    std: float

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n, "std": self.std}

    def __str__(self) -> str:
        return f"{self.mean:.4g} [{self.lo:.4g}, {self.hi:.4g}]"


def mean_ci(values: Sequence[float], level: float = 0.95) -> MeanCI:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        raise ValueError("mean_ci: no finite values")
    m = float(v.mean())
    if len(v) == 1:
        return MeanCI(m, m, m, 1, 0.0)
    s = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1)) * s / math.sqrt(len(v))
    return MeanCI(m, m - half, m + half, len(v), s)


def overlap(intervals: Iterable[MeanCI]) -> bool:
    """True when all intervals share a point: max of the lower ends <= min of the upper ends."""
    iv = list(intervals)
    return max(i.lo for i in iv) <= min(i.hi for i in iv)


def group_rows(rows: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict[Any, list]:
    """Rows by ``key(row)``, keys in first-appearance order."""
    out: dict[Any, list] = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


@dataclass(frozen=True)
class WelchTost:
    """Difference d = mean(a) - mean(b), its Welch standard error and df, the 90% interval and the
    TOST p-value of H0: |d| >= margin; verdict 'held' (equivalent: the 90% interval inside
    [-margin, margin]), 'not held' (the interval entirely outside it) or 'inconclusive';
    p_outside: the p-value of H0: |d| <= margin against d beyond the margin (the smaller of
    P(t_df > (d - margin)/se) and P(t_df < (d + margin)/se))."""

    diff: float
    stderr: float
    df: float
    ci90: tuple[float, float]
    pvalue: float
    margin: float
    verdict: str
    p_outside: float = 1.0


def welch_tost(a: Sequence[float], b: Sequence[float], margin: float, alpha: float = 0.05) -> WelchTost:
    """Two one-sided Welch t-tests of |mean(a) - mean(b)| < margin (Schuirmann 1987):

        d = a_bar - b_bar,  se^2 = s_a^2 / n_a + s_b^2 / n_b,
        df = se^4 / ((s_a^2/n_a)^2 / (n_a - 1) + (s_b^2/n_b)^2 / (n_b - 1))   (Welch-Satterthwaite),
        p = max(P(t_df > (d + margin) / se), P(t_df < (d - margin) / se)).

    Needs at least 2 values in each sample."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        raise ValueError(f"welch_tost needs at least 2 values per sample, got {x.size} and {y.size}")
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin!r}")
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(va + vb)
    d = float(x.mean() - y.mean())
    if se == 0:
        inside = abs(d) < margin
        return WelchTost(d, 0.0, math.inf, (d, d), 0.0 if inside else 1.0, margin,
                         "held" if inside else "not held", 1.0 if inside else 0.0)
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    p = float(max(stats.t.sf((d + margin) / se, df), stats.t.cdf((d - margin) / se, df)))
    q = float(stats.t.ppf(1 - alpha, df))
    lo, hi = d - q * se, d + q * se
    verdict = "held" if p < alpha else ("not held" if hi < -margin or lo > margin else "inconclusive")
    p_out = float(min(stats.t.sf((d - margin) / se, df), stats.t.cdf((d + margin) / se, df)))
    return WelchTost(d, se, float(df), (lo, hi), p, margin, verdict, p_out)
