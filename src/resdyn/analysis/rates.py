"""Rate statistics: the one place where a claim "y decays like x^b0" is tested (docs/theory.md, 11).

Data: points (x_i, y_i) with a cluster label g_i (the seed), G clusters. Within a seed the points
share a nested sample (the size-S subsample is inside the size-2S one), so they are not independent
observations; across seeds they are. Model (a random-slope model on log-log axes):

    log y_{g,j} = a_g + b_g log x_{g,j} + e_{g,j},      b_g = b + s_g,   s_g i.i.d. (0, sd_s^2),

with e_{g,j} of any within-seed correlation and variance. resdyn's estimator is the **mean of the
per-seed OLS slopes** (a cluster-level summary):

    b_g = sum_j (u_gj - u_g.)(v_gj - v_g.) / sum_j (u_gj - u_g.)^2,   u = log x, v = log y,
    b^  = (1/G) sum_g b_g,     se(b^) = sd(b_1..b_G) / sqrt(G),   df = G - 1.

Since the b_g are independent and identically distributed when every seed sees the same sizes,
(b^ - b) / se(b^) is Student-t with G - 1 df when the b_g are normal (and approximately so
otherwise), whatever the within-seed correlation: that is why the pooled OLS on seed means, which
treats the 6 sizes as independent, under-covers and this does not.

Tests of a stated slope b0 (all at level alpha = 0.05, t with df = G - 1, T = (b^ - b0) / se):

* two-sided H0: b = b0: p = 2 P(t_df > |T|); the 95% interval b^ +- t_{0.975,df} se.
* one-sided "decays at least as fast as x^b0" (H1: b < b0 + margin): p = P(t_df < (b^ - b0 - margin)/se);
  held when p < alpha.
* equivalence "decays like x^b0" (TOST with margin m, default 0.15): H0: |b - b0| >= m, rejected when
  both p_lo = P(t_df > (b^ - b0 + m)/se) and p_hi = P(t_df < (b^ - b0 - m)/se) are < alpha, i.e. when
  the 90% interval lies inside [b0 - m, b0 + m]; p_TOST = max(p_lo, p_hi). The claim is "not held"
  when the 90% interval lies entirely outside [b0 - m, b0 + m] (the data show |b - b0| > m at level
  alpha), and "inconclusive" otherwise. A non-rejection is never read as support.

Non-positive y (a measured gap of 0 or below has no logarithm) is never dropped. resdyn's treatment
is **substitution at a detection floor with a sensitivity check**: each y <= floor is replaced by
``floor`` (default: the resolution of the measurement when given, else one tenth of the smallest
positive y), the fit is repeated with the affected points at floor / 10, and a verdict that differs
between the two fits is reported as inconclusive ("depends on the floor"). The number of affected
points is part of every result and of the words shown to a reader.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["ALPHA", "MARGIN", "RateFit", "RateVerdict", "cluster_slopes", "fit_rate", "rate_claim"]

ALPHA = 0.05
MARGIN = 0.15

ArrayLike = Sequence[float] | np.ndarray


def cluster_slopes(u: np.ndarray, v: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Per-cluster OLS slopes of v on u over the last axis, vectorised over leading axes.

    u, v: (..., G, J) (u broadcastable); w: optional 0/1 weights (..., G, J) marking which points
    exist (a seed may miss a size). Returns b_g of shape (..., G); NaN where a cluster has fewer
    than 2 distinct u.
    """
    u = np.broadcast_to(np.asarray(u, dtype=np.float64), np.shape(v))
    v = np.asarray(v, dtype=np.float64)
    w = np.ones_like(v) if w is None else np.asarray(w, dtype=np.float64)
    n = w.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        ub = (w * u).sum(-1, keepdims=True) / n
        vb = (w * v).sum(-1, keepdims=True) / n
        du = u - ub
        sxx = (w * du * du).sum(-1)
        sxy = (w * du * (v - vb)).sum(-1)
        return np.where(sxx > 1e-12, sxy / sxx, np.nan)


def _t_summary(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """mean and se of slopes b (..., G) over the last axis; df = G - 1."""
    G = b.shape[-1]
    return b.mean(-1), b.std(-1, ddof=1) / math.sqrt(G), G - 1


@dataclass(frozen=True)
class RateFit:
    """A rate fitted from per-seed slopes (module docstring).

    slope b^, stderr se, df = G - 1, intercept (mean per-seed log y at log x = 0), per-seed slopes,
    n points, G seeds, nonpositive: how many y were <= floor and substituted, floor, and
    ``sensitivity``: the same fit with those points at floor / 10 (None when no point was affected).
    """

    slope: float
    stderr: float
    df: int
    intercept: float
    seed_slopes: tuple[float, ...]
    n: int
    seeds: int
    nonpositive: int = 0
    floor: float | None = None
    sensitivity: RateFit | None = None
    method: str = "cluster_slopes"

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        q = float(stats.t.ppf(0.5 + level / 2, self.df))
        return self.slope - q * self.stderr, self.slope + q * self.stderr

    @property
    def ci95(self) -> tuple[float, float]:
        return self.ci(0.95)

    def covers(self, value: float) -> bool:
        lo, hi = self.ci95
        return lo <= value <= hi

    def p_equal(self, b0: float) -> float:
        """Two-sided p-value of H0: b = b0."""
        if self.stderr <= 0:
            return 0.0 if self.slope != b0 else 1.0
        return float(2 * stats.t.sf(abs(self.slope - b0) / self.stderr, self.df))

    def p_faster(self, b0: float, margin: float = 0.0) -> float:
        """One-sided p-value of H0: b >= b0 + margin (H1: decays faster than x^(b0 + margin))."""
        if self.stderr <= 0:
            return 0.0 if self.slope < b0 + margin else 1.0
        return float(stats.t.cdf((self.slope - b0 - margin) / self.stderr, self.df))

    def p_equivalent(self, b0: float, margin: float = MARGIN) -> float:
        """TOST p-value of H0: |b - b0| >= margin: max of the two one-sided p-values."""
        if self.stderr <= 0:
            return 0.0 if abs(self.slope - b0) < margin else 1.0
        p_lo = stats.t.sf((self.slope - b0 + margin) / self.stderr, self.df)
        p_hi = stats.t.cdf((self.slope - b0 - margin) / self.stderr, self.df)
        return float(max(p_lo, p_hi))

    def as_dict(self) -> dict[str, Any]:
        return {"slope": self.slope, "stderr": self.stderr, "df": self.df, "ci95": list(self.ci95),
                "ci90": list(self.ci(0.90)), "intercept": self.intercept,
                "seed_slopes": list(self.seed_slopes), "n": self.n, "seeds": self.seeds,
                "nonpositive": self.nonpositive, "floor": self.floor, "method": self.method}


def _arrays(x: ArrayLike, y: ArrayLike, seeds: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    g = np.asarray(seeds).ravel()
    if not (x.size == y.size == g.size):
        raise ValueError(f"x, y and seeds must have one entry per point, got {x.size}, {y.size}, {g.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be finite (a diverged cell has no gap: leave it out and say so)")
    if np.any(x <= 0):
        raise ValueError("x must be > 0 for a rate fit")
    return x, y, g


def _fit_logs(u: np.ndarray, v: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.unique(g)
    if labels.size < 2:
        raise ValueError(f"a rate fit needs at least 2 seeds, got {labels.size}")
    b = cluster_slopes(np.stack([np.where(g == lab, u, 0.0) for lab in labels]),
                       np.stack([np.where(g == lab, v, 0.0) for lab in labels]),
                       np.stack([(g == lab).astype(float) for lab in labels]))
    if np.any(np.isnan(b)):
        bad = [lab for lab, s in zip(labels, b, strict=True) if np.isnan(s)]
        raise ValueError(f"seeds {bad} need points at 2 or more distinct x for a slope")
    icept = np.array([v[g == lab].mean() - s * u[g == lab].mean() for lab, s in zip(labels, b, strict=True)])
    return b, icept


def fit_rate(x: ArrayLike, y: ArrayLike, seeds: ArrayLike, floor: float | None = None) -> RateFit:
    """Per-seed log-log slopes of y against x and their t summary (module docstring).

    floor: the detection floor for y <= 0 (default: a tenth of the smallest positive y). Raises
    ValueError when fewer than 2 seeds have 2 distinct x, or when no y is positive.
    """
    x, y, g = _arrays(x, y, seeds)
    pos = y[y > 0]
    if floor is None:
        if pos.size == 0:
            raise ValueError("no positive y: a rate of a quantity that is never positive has no log-log fit")
        floor = float(pos.min()) / 10.0
    if not (math.isfinite(floor) and floor > 0):
        raise ValueError(f"floor must be a finite number > 0, got {floor!r}")
    low = y <= floor
    count = int(low.sum())
    u = np.log(x)

    def one(fl: float) -> RateFit:
        v = np.log(np.where(low, fl, y))
        b, icept = _fit_logs(u, v, g)
        m, se, df = _t_summary(b)
        return RateFit(float(m), float(se), df, float(icept.mean()), tuple(float(s) for s in b),
                       int(x.size), int(b.size), count, fl if count else None)

    main = one(floor)
    if count:
        main = replace(main, sensitivity=one(floor / 10.0))
    return main


@dataclass(frozen=True)
class RateVerdict:
    """verdict in {'held', 'not held', 'inconclusive'}, the words for a reader, the test's name and
    p-value, and the numbers behind it."""

    verdict: str
    words: str
    test: str
    pvalue: float
    values: dict[str, Any] = field(default_factory=dict)


def _decide(fit: RateFit, b0: float, kind: str, margin: float, alpha: float) -> tuple[str, float]:
    if kind == "equivalent":
        p = fit.p_equivalent(b0, margin)
        lo, hi = fit.ci(1 - 2 * alpha)
        if p < alpha:
            return "held", p
        if hi < b0 - margin or lo > b0 + margin:
            return "not held", p
        return "inconclusive", p
    if kind == "faster":
        p = fit.p_faster(b0, margin)
        if p < alpha:
            return "held", p
        # the reverse one-sided test: the data show b > b0 + margin
        if 1.0 - p < alpha:
            return "not held", p
        return "inconclusive", p
    raise ValueError(f"kind must be 'equivalent' or 'faster', got {kind!r}")


def rate_claim(fit: RateFit, b0: float = -0.5, kind: str = "equivalent", margin: float = MARGIN,
               alpha: float = ALPHA) -> RateVerdict:
    """The verdict on "y decays like x^b0" (kind 'equivalent', TOST with ``margin``) or "y decays at
    least as fast as x^b0" (kind 'faster', one-sided, H1: b < b0 + margin), in words."""
    verdict, p = _decide(fit, b0, kind, margin, alpha)
    lo, hi = fit.ci95
    lo90, hi90 = fit.ci(1 - 2 * alpha)
    p_eq = fit.p_equal(b0)
    if kind == "equivalent":
        test = (f"TOST equivalence, H0: |b - ({b0:g})| >= {margin:g}, alpha {alpha:g} "
                f"(90% CI [{lo90:.3f}, {hi90:.3f}] inside [{b0 - margin:.2f}, {b0 + margin:.2f}])")
    else:
        test = f"one-sided t, H0: b >= {b0 + margin:g}, alpha {alpha:g}"
    words = (f"slope {fit.slope:.3f} (se {fit.stderr:.3f}, {fit.seeds} seeds), 95% CI [{lo:.3f}, {hi:.3f}]; "
             f"test p = {p:.2g}; H0: b = {b0:g} two-sided p = {p_eq:.2g}")
    if verdict == "inconclusive":
        words += "; inconclusive: the test does not reject, which is not evidence for the claim"
    elif verdict == "not held":
        words += "; not held: the data reject the claimed rate"
    if fit.nonpositive:
        alt = _decide(fit.sensitivity, b0, kind, margin, alpha)[0] if fit.sensitivity else verdict
        words += (f"; {fit.nonpositive} of {fit.n} points <= 0 set to the floor {fit.floor:.3g}")
        if alt != verdict:
            words += f" (verdict at floor / 10: {alt}; reported inconclusive, it depends on the floor)"
            verdict = "inconclusive"
    values = {**fit.as_dict(), "b0": b0, "kind": kind, "margin": margin, "alpha": alpha,
              "p_test": p, "p_equal": p_eq}
    return RateVerdict(verdict, words, test, p, values)
