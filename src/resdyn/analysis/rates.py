"""Rate statistics: the one place where a claim "y decays like x^b0" is tested (docs/theory.md, 11).

Data: points (x_i, y_i) with a cluster label g_i (the seed), G clusters. Within a seed the points
share a nested sample (the size-S subsample is inside the size-2S one), so they are not independent
observations; across seeds they are. Model (a random-slope model on log-log axes):

    log y_{g,j} = a_g + b_g log x_{g,j} + e_{g,j},      b_g = b + s_g,   s_g i.i.d. (0, sd_s^2),

with e_{g,j} of any within-seed correlation and variance. resdyn's estimator is the **mean of the
per-seed slopes** (a cluster-level summary):

    b_g = sum_j (u_gj - u_g.)(v_gj - v_g.) / sum_j (u_gj - u_g.)^2,   u = log x, v = log y,
    b^  = (1/G) sum_g b_g,     se(b^) = sd(b_1..b_G) / sqrt(G),   df = G - 1.

Since the b_g are independent and identically distributed when every seed sees the same sizes,
(b^ - b) / se(b^) is Student-t with G - 1 df when the b_g are normal (and approximately so
otherwise), whatever the within-seed correlation.

Tests of a stated slope b0 (level alpha = 0.05, t with df = G - 1, T = (b^ - b0) / se):

* two-sided H0: b = b0: p = 2 P(t_df > |T|); the 95% interval b^ +- t_{0.975,df} se.
* one-sided "decays at least as fast as x^b0" (H1: b < b0 + margin): p = P(t_df < (b^ - b0 - margin)/se).
* equivalence "decays like x^b0" (TOST with margin m, default 0.15): H0: |b - b0| >= m, rejected when
  the 90% interval lies inside [b0 - m, b0 + m]; p_TOST = max(p_lo, p_hi). 'not held' when the
  90% interval lies entirely outside [b0 - m, b0 + m]; 'inconclusive' otherwise.

**Straightness** (:func:`straightness`). A slope describes a power law only where log y is a
straight line in log x. Per seed, the quadratic log y = a_g + b_g (u - u.) + c_g q(u) (q the
quadratic orthogonal to 1 and u over the sizes) is fitted by least squares; c^ = mean(c_g),
se = sd(c_g)/sqrt(G), two-sided t test of H0: c = 0 with G - 1 df. The test is valid for any
within-seed covariance (the c_g are i.i.d. across seeds). Equal weights, not generalised least
squares with the covariance of nested means (1/max(x_j, x_k)): that weighting assumes the noise of
a gap shrinks like 1/S, but a gap's noise at large S is the test set's and the training run's,
about constant, and on digits it hid a curvature equal weights see in every seed (p 0.52 against
0.086, docs/theory.md 11). The local slope at the ends of the range is b_g + 2 c_g (u_end - u.)
averaged over seeds. With a value <= 0 in the data the straightness test compares, per seed, the
slope over the lower half of the sizes with that over the upper half (paired t across seeds).

**Range** (:func:`straight_range`). The claim "y ~ x^b" is made only over the widest run of
consecutive sizes (at least ``min_sizes``; the larger sizes first among runs of equal length)
whose straightness test does not reject at alpha; the fit, the test and the local slopes at its
ends are those of that range. No such run: no claim (inconclusive).

**Non-positive y** (a measured gap of 0 or below has no logarithm). Values are never dropped or
floored (a floor biases the slope: by -0.15 to -0.32 in the sweeps where it happened). When any
y <= 0, the per-seed slope is fitted on the linear scale instead, y_gj = A_g x_gj^{b_g} + e_gj, by
least squares (the MLE under additive noise, which is what makes a small gap negative): b_g
minimises the profile RSS(b) = sum y^2 - max(0, sum y x^b)^2 / sum x^{2b} over a grid on
[-4, 2] refined by a parabola through the best grid point and its neighbours; the t summary over
seeds is the same. ``method`` says which fit was used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from .verdicts import ALPHA, Verdict, decide, no_test

__all__ = ["ALPHA", "MARGIN", "RateFit", "RateVerdict", "Straightness", "cluster_slopes", "fit_rate",
           "nls_slopes", "quadratic_terms", "rate_claim", "straight_range", "straightness"]

MARGIN = 0.15
MIN_SIZES = 4
B_GRID = np.linspace(-4.0, 2.0, 1201)

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


def nls_slopes(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares fits of y = A x^b on the linear scale over the last axis (module docstring),
    vectorised over leading axes. x: (J,) sizes shared by every row; y: (..., J).

    Returns (b, log A) with A for x in its own units; NaN where no b gives A > 0."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    scale = math.exp(float(np.log(x).mean()))
    P = (x / scale)[None, :] ** B_GRID[:, None]                      # (K, J)
    sxy = y @ P.T                                                     # (..., K)
    sxx = (P * P).sum(-1)                                             # (K,)
    gain = np.maximum(sxy, 0.0) ** 2 / sxx                            # RSS = sum y^2 - gain
    k = np.argmax(gain, axis=-1)
    kk = np.clip(k, 1, B_GRID.size - 2)
    g0, g1, g2 = (np.take_along_axis(gain, (kk + d)[..., None], -1)[..., 0] for d in (-1, 0, 1))
    den = g0 - 2 * g1 + g2
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = np.where((den < 0) & (k == kk), 0.5 * (g0 - g2) / den, 0.0)
    step = B_GRID[1] - B_GRID[0]
    b = B_GRID[kk] + np.clip(shift, -1.0, 1.0) * step
    b = np.where(k == kk, b, B_GRID[k])
    pb = (x / scale)[None, :] ** np.asarray(b)[..., None]
    A = (y * pb).sum(-1) / (pb * pb).sum(-1)
    ok = np.take_along_axis(gain, k[..., None], -1)[..., 0] > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        logA = np.where(ok & (A > 0), np.log(np.where(A > 0, A, 1.0)) - b * math.log(scale), np.nan)
    return np.where(ok, b, np.nan), logA


def _t_summary(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """mean and se of slopes b (..., G) over the last axis; df = G - 1."""
    G = b.shape[-1]
    return b.mean(-1), b.std(-1, ddof=1) / math.sqrt(G), G - 1


@dataclass(frozen=True)
class RateFit:
    """A rate fitted from per-seed slopes (module docstring).

    slope b^, stderr se, df = G - 1, intercept (mean per-seed log y at log x = 0), per-seed slopes,
    n points, G seeds, nonpositive: how many y were <= 0, method: 'cluster_slopes' (log-log OLS)
    or 'cluster_nls' (linear-scale least squares, used when some y <= 0).
    """

    slope: float
    stderr: float
    df: int
    intercept: float
    seed_slopes: tuple[float, ...]
    n: int
    seeds: int
    nonpositive: int = 0
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

    def p_outside(self, b0: float, margin: float = MARGIN) -> float:
        """p-value of H0: |b - b0| <= margin against b beyond it: the smaller one-sided p."""
        if self.stderr <= 0:
            return 0.0 if abs(self.slope - b0) > margin else 1.0
        hi = stats.t.sf((self.slope - b0 - margin) / self.stderr, self.df)
        lo = stats.t.cdf((self.slope - b0 + margin) / self.stderr, self.df)
        return float(min(hi, lo))

    def as_dict(self) -> dict[str, Any]:
        return {"slope": self.slope, "stderr": self.stderr, "df": self.df, "ci95": list(self.ci95),
                "ci90": list(self.ci(0.90)), "intercept": self.intercept,
                "seed_slopes": list(self.seed_slopes), "n": self.n, "seeds": self.seeds,
                "nonpositive": self.nonpositive, "method": self.method}


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


def _per_seed(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> list[tuple[Any, np.ndarray, np.ndarray]]:
    labels = np.unique(g)
    if labels.size < 2:
        raise ValueError(f"a rate fit needs at least 2 seeds, got {labels.size}")
    out = []
    for lab in labels:
        m = g == lab
        order = np.argsort(x[m], kind="stable")
        xs, ys = x[m][order], y[m][order]
        if np.unique(xs).size < 2:
            raise ValueError(f"seeds [{lab}] need points at 2 or more distinct x for a slope")
        out.append((lab, xs, ys))
    return out


def fit_rate(x: ArrayLike, y: ArrayLike, seeds: ArrayLike) -> RateFit:
    """Per-seed slopes of y against x and their t summary (module docstring): log-log OLS when
    every y > 0, linear-scale least squares of y = A x^b per seed when some y <= 0.

    Raises ValueError when fewer than 2 seeds have 2 distinct x, or when a seed's y has no
    positive trend to fit."""
    x, y, g = _arrays(x, y, seeds)
    per = _per_seed(x, y, g)
    count = int(np.sum(y <= 0))
    if count == 0:
        b, icept = [], []
        for _, xs, ys in per:
            u, v = np.log(xs), np.log(ys)
            bg = float(cluster_slopes(u[None], v[None])[0])
            b.append(bg)
            icept.append(float(v.mean() - bg * u.mean()))
        method = "cluster_slopes"
    else:
        b, icept = [], []
        for lab, xs, ys in per:
            bg, la = nls_slopes(xs, ys[None])
            if not np.isfinite(bg[0]):
                raise ValueError(f"seed {lab}: no A > 0 fits y = A x^b (no positive values to fit)")
            b.append(float(bg[0]))
            icept.append(float(la[0]))
        method = "cluster_nls"
    ba = np.asarray(b)
    m, se, df = _t_summary(ba)
    return RateFit(float(m), float(se), df, float(np.mean(icept)), tuple(ba.tolist()), int(x.size),
                   int(ba.size), count, method)


# ------------------------------------------------------------------------------ straightness


def _quadratic_projector(x: np.ndarray) -> np.ndarray:
    """(3, J) least-squares coefficient map of log y on [1, u - u., q(u)], u = log x, q the
    quadratic orthogonal to 1 and u."""
    u = np.log(x)
    uc = u - u.mean()
    X = np.stack([np.ones_like(u), uc, uc * uc - (uc * uc).mean()], 1)
    return np.linalg.pinv(X)


def quadratic_terms(x: np.ndarray, logy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row least-squares (slope at the centre, quadratic coefficient c) of logy (..., J) on
    log x (J,) (module docstring); the local slope at u is slope + 2 c (u - mean u)."""
    P = _quadratic_projector(np.asarray(x, dtype=np.float64))
    coef = np.asarray(logy, dtype=np.float64) @ P.T
    return coef[..., 1], coef[..., 2]


@dataclass(frozen=True)
class Straightness:
    """The straightness test of one range of sizes: curvature c^ (per unit (log x)^2; None for the
    split-halves test), its p-value (two-sided, t across seeds), the mean local slopes at the
    lower and upper end, the sizes tested, the test's name and the number of seeds."""

    pvalue: float
    curvature: float | None
    slope_low: float
    slope_high: float
    sizes: tuple[float, ...]
    test: str
    seeds: int

    def as_dict(self) -> dict[str, Any]:
        return {"pvalue": self.pvalue, "curvature": self.curvature, "local_slope_low": self.slope_low,
                "local_slope_high": self.slope_high, "sizes": list(self.sizes), "test": self.test,
                "seeds": self.seeds}

    def words(self) -> str:
        lo, hi = self.sizes[0], self.sizes[-1]
        return (f"straightness over S {lo:g}..{hi:g}: {self.test} p = {self.pvalue:.3g}; local slope "
                f"{self.slope_low:.3f} at S = {lo:g}, {self.slope_high:.3f} at S = {hi:g}")


def _grid(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sizes shared by every seed and y as (G, J); raises when the seeds saw different sizes."""
    per = _per_seed(x, y, g)
    sizes = per[0][1]
    for lab, xs, _ in per:
        if xs.shape != sizes.shape or not np.allclose(xs, sizes):
            raise ValueError(f"seed {lab} saw other sizes than the first seed: no straightness test")
    return sizes, np.stack([ys for _, _, ys in per])


def _t_two_sided(d: np.ndarray) -> float:
    """Two-sided one-sample t p-value of H0: E d = 0 (|d| < 1e-10, rounding of an exact line, is 0)."""
    d = np.where(np.abs(d) < 1e-10, 0.0, d)
    G = d.shape[-1]
    s = d.std(-1, ddof=1)
    if s == 0:
        return 1.0 if d.mean() == 0 else 0.0
    return float(2 * stats.t.sf(abs(d.mean()) / (s / math.sqrt(G)), G - 1))


def straightness(x: ArrayLike, y: ArrayLike, seeds: ArrayLike) -> Straightness:
    """The straightness test of the module docstring on every size the seeds share (needs at
    least 4 sizes and 2 seeds)."""
    x, y, g = _arrays(x, y, seeds)
    sizes, Y = _grid(x, y, g)
    J, G = sizes.size, Y.shape[0]
    if J < MIN_SIZES:
        raise ValueError(f"a straightness test needs at least {MIN_SIZES} sizes, got {J}")
    u = np.log(sizes)
    if np.all(Y > 0):
        b, c = quadratic_terms(sizes, np.log(Y))
        ends = u[[0, -1]] - u.mean()
        local = b[:, None] + 2 * c[:, None] * ends[None, :]
        return Straightness(_t_two_sided(c), float(c.mean()), float(local[:, 0].mean()),
                            float(local[:, 1].mean()), tuple(sizes.tolist()),
                            "quadratic term in log S (per-seed least squares), two-sided t across seeds", G)
    half = (J + 1) // 2
    lo, _ = nls_slopes(sizes[:half + (J % 2 == 0)], Y[:, :half + (J % 2 == 0)])
    hi, _ = nls_slopes(sizes[half - 1:], Y[:, half - 1:])
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError("a half of the sizes has no positive trend to fit: no straightness test")
    return Straightness(_t_two_sided(hi - lo), None, float(lo.mean()), float(hi.mean()),
                        tuple(sizes.tolist()),
                        "slope over the upper half of the sizes - lower half (linear-scale fits, "
                        "values <= 0 present), two-sided paired t across seeds", G)


def straight_range(x: ArrayLike, y: ArrayLike, seeds: ArrayLike, alpha: float = ALPHA,
                   min_sizes: int = MIN_SIZES) -> tuple[Straightness, Straightness | None]:
    """(the test over every size, the test over the range the claim is made on): the widest run
    of >= ``min_sizes`` consecutive sizes whose straightness test does not reject (larger sizes
    first among equal widths); None when every such run is curved."""
    x, y, g = _arrays(x, y, seeds)
    full = straightness(x, y, g)
    if full.pvalue >= alpha:
        return full, full
    sizes = np.asarray(full.sizes)
    J = sizes.size
    for width in range(J - 1, min_sizes - 1, -1):
        for start in range(J - width, -1, -1):
            keep = np.isin(x, sizes[start:start + width])
            try:
                s = straightness(x[keep], y[keep], g[keep])
            except ValueError:
                continue
            if s.pvalue >= alpha:
                return full, s
    return full, None


# ---------------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class RateVerdict:
    """verdict in {'held', 'not held', 'inconclusive'}, the words for a reader, the test's name and
    p-value, the numbers behind it, and the rule's :class:`Verdict`."""

    verdict: str
    words: str
    test: str
    pvalue: float | None
    values: dict[str, Any] = field(default_factory=dict)
    decision: Verdict | None = None


def _decide(fit: RateFit, b0: float, kind: str, margin: float, alpha: float, unit: str = "seed") -> Verdict:
    if kind == "equivalent":
        name = f"TOST, H1: |b - ({b0:g})| < {margin:g} (per-seed slopes, t)"
        return decide(name, fit.p_equivalent(b0, margin), fit.p_outside(b0, margin), unit, fit.seeds, alpha)
    if kind == "faster":
        name = f"one-sided t, H1: b < {b0 + margin:g} (per-seed slopes)"
        p = fit.p_faster(b0, margin)
        return decide(name, p, 1.0 - p, unit, fit.seeds, alpha)
    raise ValueError(f"kind must be 'equivalent' or 'faster', got {kind!r}")


def rate_claim(fit: RateFit, b0: float = -0.5, kind: str = "equivalent", margin: float = MARGIN,
               alpha: float = ALPHA, straight: tuple[Straightness | None, Straightness | None] | None = None,
               unit: str = "seed") -> RateVerdict:
    """The verdict on "y decays like x^b0" (kind 'equivalent', TOST with ``margin``) or "y decays at
    least as fast as x^b0" (kind 'faster', one-sided, H1: b < b0 + margin), in words.

    ``straight``: (the straightness test over every size, the one over the range ``fit`` covers,
    or None when every range is curved), from :func:`straight_range`; ``fit`` must be the fit over
    that range. Without a straight range the verdict is inconclusive. ``unit``: what the
    clusters are (seeds, restarts)."""
    lo, hi = fit.ci95
    p_eq = fit.p_equal(b0)
    head = (f"slope {fit.slope:.3f} (se {fit.stderr:.3f}, {fit.seeds} {unit}s), 95% CI [{lo:.3f}, {hi:.3f}]; "
            f"H0: b = {b0:g} two-sided p = {p_eq:.2g}")
    if fit.nonpositive:
        head += (f"; {fit.nonpositive} of {fit.n} values <= 0: slopes fitted on the linear scale "
                 "(y = A S^b, least squares), nothing floored or dropped")
    full, rng = straight if straight is not None else (None, None)
    values = {**fit.as_dict(), "b0": b0, "kind": kind, "margin": margin, "alpha": alpha, "p_equal": p_eq}
    if straight is not None and rng is None:
        d = no_test(_decide(fit, b0, kind, margin, alpha, unit).test,
                    "the log-log curve is significantly curved over every range of "
                    f"{MIN_SIZES} or more consecutive sizes, so no power law is claimed "
                    f"({full.words() if full else ''})", unit, fit.seeds)
    else:
        d = _decide(fit, b0, kind, margin, alpha, unit)
    if full is not None:
        head += f"; {full.words()}"
        values["straightness"] = full.as_dict()
    if rng is not None:
        values["range"] = [rng.sizes[0], rng.sizes[-1]]
        values["range_straightness"] = rng.as_dict()
        if rng is not full:
            head += (f"; claim restricted to S {rng.sizes[0]:g}..{rng.sizes[-1]:g} ({rng.words()})")
        else:
            head += f"; claim over S {rng.sizes[0]:g}..{rng.sizes[-1]:g} (not significantly curved)"
    values.update(p_test=d.p_for, verdict=d.as_dict())
    words = f"{head}; {d.words()}"
    return RateVerdict(d.verdict, words, d.test_words(), d.pvalue, values, d)
