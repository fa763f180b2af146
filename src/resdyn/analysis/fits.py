"""Straight-line fits on log-log axes: rates such as gap ~ S^b, bound ~ S^b, error ~ L^b.

``fit_loglog(x, y)`` is ordinary least squares of log y on log x,

    log y_i = a + b log x_i + e_i,

with slope b, its standard error se(b) = sqrt(s^2 / sum_i (u_i - u_bar)^2) (u = log x,
s^2 = RSS / (n - 2)), a 95% interval b +- t_{0.975, n-2} se(b) and the two-sided p-value of
H0: b = 0 from Student's t with n - 2 degrees of freedom.

With ``clusters`` (e.g. the seed of each point, when several seeds are measured on nested
subsamples) the points of one cluster are not independent, so 3 x n points are never treated as
3n observations. The method is **per-cluster slopes**: an OLS slope b_g is fitted within each
cluster g = 1..G, the estimate is their mean b = (1/G) sum_g b_g, se(b) = sd(b_g) / sqrt(G), and
the interval and p-value use Student's t with G - 1 degrees of freedom. (The intercept is the
mean of the per-cluster intercepts.) This is exact under a random-slope model with independent
clusters, and honest about how little a handful of seeds says.

``bootstrap_slope`` resamples whole clusters with replacement and refits (pooled OLS on the
resampled points), returning a percentile interval.

These fits are descriptive. A *claim* about a rate (held / not held / inconclusive, tests of
H0: b = b0, equivalence, non-positive values) goes through :mod:`resdyn.analysis.rates`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["FitResult", "bootstrap_slope", "fit_loglog"]

ArrayLike = Sequence[float] | np.ndarray


@dataclass(frozen=True)
class FitResult:
    """A log-log line fit: slope, intercept (of log y at log x = 0), standard error of the
    slope, 95% interval, two-sided p-value of slope = 0, number of points n, degrees of freedom
    df, and the method ('ols' or 'cluster_slopes')."""

    slope: float
    intercept: float
    stderr: float
    ci95: tuple[float, float]
    pvalue: float
    n: int
    df: int
    method: str = "ols"

    def covers(self, value: float) -> bool:
        """True when ``value`` lies in the closed 95% interval."""
        lo, hi = self.ci95
        return lo <= value <= hi


def _logs(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be finite")
    if np.any(x <= 0):
        raise ValueError("x must be > 0 for a log-log fit; got a value <= 0")
    if np.any(y <= 0):
        raise ValueError(
            "y must be > 0 for a log-log fit; got a value <= 0 (a non-positive gap has no log: "
            "drop, clip or shift it before fitting, and say which)"
        )
    return np.log(x), np.log(y)


def _ols(u: np.ndarray, v: np.ndarray) -> tuple[float, float, float, int]:
    """slope, intercept, stderr, df of v on u."""
    n = u.size
    du = u - u.mean()
    sxx = float(du @ du)
    if n < 3 or sxx <= 0:
        raise ValueError(f"a line fit needs at least 3 points with at least 2 distinct x, got n={n}")
    b = float(du @ (v - v.mean())) / sxx
    a = float(v.mean() - b * u.mean())
    resid = v - a - b * u
    s2 = float(resid @ resid) / (n - 2)
    return b, a, math.sqrt(s2 / sxx), n - 2


def _result(b: float, a: float, se: float, df: int, n: int, method: str) -> FitResult:
    q = float(stats.t.ppf(0.975, df))
    p = float(2 * stats.t.sf(abs(b) / se, df)) if se > 0 else (0.0 if b != 0 else 1.0)
    return FitResult(b, a, se, (b - q * se, b + q * se), p, n, df, method)


def fit_loglog(x: ArrayLike, y: ArrayLike, clusters: ArrayLike | None = None) -> FitResult:
    """OLS of log y on log x; with ``clusters``, the per-cluster-slope method (module docstring).

    Raises ValueError if any x or y is <= 0 or not finite, or if there are too few points
    (OLS: 3; clustered: at least 2 clusters, each with 2 distinct x).
    """
    u, v = _logs(x, y)
    if clusters is None:
        b, a, se, df = _ols(u, v)
        return _result(b, a, se, df, u.size, "ols")
    g = np.asarray(clusters).ravel()
    if g.size != u.size:
        raise ValueError(f"clusters must have one label per point ({u.size}), got {g.size}")
    labels = np.unique(g)
    if labels.size < 2:
        raise ValueError(f"clusters must name at least 2 clusters, got {labels.size}")
    slopes, icepts = [], []
    for lab in labels:
        m = g == lab
        du = u[m] - u[m].mean()
        sxx = float(du @ du)
        if sxx <= 0:
            raise ValueError(f"cluster {lab!r} needs at least 2 distinct x values")
        bg = float(du @ (v[m] - v[m].mean())) / sxx
        slopes.append(bg)
        icepts.append(float(v[m].mean() - bg * u[m].mean()))
    s = np.asarray(slopes)
    G = s.size
    se = float(s.std(ddof=1) / math.sqrt(G))
    return _result(float(s.mean()), float(np.mean(icepts)), se, G - 1, u.size, "cluster_slopes")


def bootstrap_slope(
    x: ArrayLike,
    y: ArrayLike,
    clusters: ArrayLike,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of the pooled log-log OLS slope, resampling whole clusters.

    Each replicate draws G clusters with replacement (G = number of clusters) and fits OLS on
    all their points; replicates with fewer than 2 distinct x are redrawn.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    u, v = _logs(x, y)
    g = np.asarray(clusters).ravel()
    if g.size != u.size:
        raise ValueError(f"clusters must have one label per point ({u.size}), got {g.size}")
    labels = np.unique(g)
    groups = [np.flatnonzero(g == lab) for lab in labels]
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    k = 0
    tries = 0
    while k < n_boot:
        tries += 1
        if tries > 100 * n_boot:
            raise ValueError("bootstrap_slope: resamples keep having fewer than 2 distinct x")
        idx = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        uu, vv = u[idx], v[idx]
        du = uu - uu.mean()
        sxx = float(du @ du)
        if sxx <= 0:
            continue
        out[k] = float(du @ (vv - vv.mean())) / sxx
        k += 1
    a = (1 - level) / 2
    return float(np.quantile(out, a)), float(np.quantile(out, 1 - a))
