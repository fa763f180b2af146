"""Rate statistics: coverage and size by simulation, verdicts, and non-positive gaps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from resdyn.analysis.rates import cluster_slopes, fit_rate, rate_claim

SIZES = np.array([32, 64, 128, 256, 512, 1024], dtype=float)
SEEDS = 5


def simulate(true_b: float, reps: int, rng: np.random.Generator, sigma0: float = 0.21) -> np.ndarray:
    """Sweeps shaped like the sample-size reproduction: y (reps, SEEDS, 6).

    log y = a_g + b_g log S + e_{g,j}; b_g = true_b + N(0, 0.05^2) per seed; a_g ~ N(0, 0.3^2);
    nested subsamples: e_j = sum_{i >= j} z_i, z_i independent with Var e_j = sigma0^2 S_0 / S_j,
    so the noise is heteroscedastic (larger at small S) and a smaller sample's noise contains a
    larger one's, Cov(e_j, e_k) = Var e_max(j,k)."""
    var = sigma0**2 * SIZES[0] / SIZES
    inc = np.sqrt(np.diff(var[::-1], prepend=0.0))[::-1]  # sd of z_i, i = 0..5
    z = rng.standard_normal((reps, SEEDS, SIZES.size)) * inc
    e = np.cumsum(z[..., ::-1], axis=-1)[..., ::-1]
    b = true_b + 0.05 * rng.standard_normal((reps, SEEDS, 1))
    a = 0.3 * rng.standard_normal((reps, SEEDS, 1))
    return np.exp(a + b * np.log(SIZES) + e)


def run_fits(y: np.ndarray) -> list:
    x = np.tile(SIZES, SEEDS)
    g = np.repeat(np.arange(SEEDS), SIZES.size)
    return [fit_rate(x, sweep.ravel(), g) for sweep in y]


def test_coverage_size_and_equivalence_power_by_simulation():
    rng = np.random.default_rng(20261202)
    fits = run_fits(simulate(-0.5, 400, rng))
    se = np.array([f.stderr for f in fits])
    # the noise is sized like the digits reproduction: a sweep's slope has a standard error near 0.03
    assert 0.025 < np.median(se) < 0.035, np.median(se)
    cover = np.mean([f.covers(-0.5) for f in fits])
    reject = np.mean([f.p_equal(-0.5) < 0.05 for f in fits])
    held = np.mean([rate_claim(f, -0.5).verdict == "held" for f in fits])
    fits_far = run_fits(simulate(-0.8, 400, rng))
    held_far = np.mean([rate_claim(f, -0.5).verdict == "held" for f in fits_far])
    not_held_far = np.mean([rate_claim(f, -0.5).verdict == "not held" for f in fits_far])
    print(f"coverage {cover:.3f} size {reject:.3f} equivalence held at -0.5 {held:.3f}, "
          f"at -0.8 {held_far:.3f} (not held {not_held_far:.3f}); median se {np.median(se):.4f}")
    assert cover >= 0.93
    assert 0.02 <= reject <= 0.08
    assert held >= 0.80
    assert held_far <= 0.05
    assert not_held_far >= 0.9


def test_pooled_ols_on_seed_means_undercovers_in_the_same_simulation():
    """The method the issue replaced: OLS of log(seed-mean) on log S with 4 df. Its interval must
    cover worse than 93% here (else the simulation would not tell the methods apart)."""
    rng = np.random.default_rng(7)
    y = simulate(-0.5, 400, rng)
    u = np.log(SIZES)
    cover = 0
    for sweep in y:
        r = stats.linregress(u, np.log(sweep.mean(0)))
        q = stats.t.ppf(0.975, SIZES.size - 2)
        cover += abs(r.slope + 0.5) <= q * r.stderr
    assert cover / 400 < 0.90


def test_cluster_slopes_match_scipy_per_seed_and_with_missing_points():
    rng = np.random.default_rng(1)
    u = np.log(SIZES)
    v = rng.normal(size=(3, SIZES.size))
    b = cluster_slopes(u, v)
    assert np.allclose(b, [stats.linregress(u, vi).slope for vi in v], atol=1e-12)
    w = np.ones_like(v)
    w[1, [0, 4]] = 0.0
    bw = cluster_slopes(u, v, w)
    keep = w[1] > 0
    assert bw[1] == pytest.approx(stats.linregress(u[keep], v[1, keep]).slope, abs=1e-12)
    assert bw[0] == pytest.approx(b[0], abs=1e-12)


def test_fit_rate_values_and_tests_by_hand():
    # three seeds with exact slopes -0.4, -0.5, -0.6: mean -0.5, sd 0.1, se 0.1/sqrt(3)
    x = np.tile(SIZES, 3)
    g = np.repeat([0, 1, 2], SIZES.size)
    y = np.concatenate([2.0 * SIZES ** b for b in (-0.4, -0.5, -0.6)])
    f = fit_rate(x, y, g)
    se = 0.1 / np.sqrt(3)
    assert f.slope == pytest.approx(-0.5, abs=1e-12) and f.stderr == pytest.approx(se, rel=1e-9)
    assert f.df == 2 and f.intercept == pytest.approx(np.log(2.0), abs=1e-9)
    q = stats.t.ppf(0.975, 2)
    assert f.ci95 == pytest.approx((-0.5 - q * se, -0.5 + q * se))
    assert f.p_equal(-0.3) == pytest.approx(2 * stats.t.sf(0.2 / se, 2))
    assert f.p_faster(-0.3) == pytest.approx(stats.t.cdf(-0.2 / se, 2))
    tost = max(stats.t.sf((0.15) / se, 2), stats.t.cdf(-0.15 / se, 2))
    assert f.p_equivalent(-0.5) == pytest.approx(tost)
    # se 0.058 with 2 df: the 90% interval (+-0.168) is wider than the margin: inconclusive
    v = rate_claim(f, -0.5)
    assert v.verdict == "inconclusive" and "not evidence" in v.words
    assert rate_claim(f, -1.5).verdict == "not held"
    assert rate_claim(f, -0.2, kind="faster").verdict == "held"
    assert rate_claim(f, -0.5, kind="faster").verdict == "inconclusive"
    assert "p = " in v.test and v.decision.p_for == pytest.approx(tost)
    assert rate_claim(f, -0.9, kind="faster").verdict == "not held"


def test_nonpositive_points_switch_to_linear_scale_least_squares_per_seed():
    x = np.tile(SIZES, 3)
    g = np.repeat([0, 1, 2], SIZES.size)
    y = np.concatenate([SIZES ** b for b in (-0.45, -0.5, -0.55)])
    y[5] = 0.0   # seed 0 at S = 1024
    y[11] = -0.01
    f = fit_rate(x, y, g)
    assert f.nonpositive == 2 and f.method == "cluster_nls" and f.n == 18  # nothing dropped
    # seed 2 has no value <= 0 and lies on an exact power law: the least-squares fit recovers it
    assert f.seed_slopes[2] == pytest.approx(-0.55, abs=1e-4)
    # seed 0's slope is the least-squares fit of y = A S^b to its six values (checked by a fine scan)
    bs = np.linspace(-1.0, 0.0, 20001)
    P = SIZES[None, :] ** bs[:, None]
    gain = np.maximum(P @ y[:6], 0) ** 2 / (P * P).sum(1)
    assert f.seed_slopes[0] == pytest.approx(bs[np.argmax(gain)], abs=2e-4)
    words = rate_claim(f, -0.5).words
    assert "2 of 18 values <= 0: slopes fitted on the linear scale" in words


def test_linear_scale_fit_matches_log_fit_on_exact_power_laws():
    from resdyn.analysis.rates import nls_slopes

    y = np.stack([3.0 * SIZES ** b for b in (-0.3, -0.5, -0.8, 0.2)])
    b, logA = nls_slopes(SIZES, y)
    assert b == pytest.approx([-0.3, -0.5, -0.8, 0.2], abs=1e-4)
    assert logA == pytest.approx([np.log(3.0)] * 4, abs=2e-3)
    # nothing positive to fit: no slope
    assert np.isnan(nls_slopes(SIZES, -np.ones((1, SIZES.size)))[0][0])


def test_straight_range_restricts_a_flattening_curve_and_names_its_ends():
    from resdyn.analysis.rates import straight_range, straightness

    rng = np.random.default_rng(3)
    u = np.log(SIZES)
    x = np.tile(SIZES, 5)
    g = np.repeat(np.arange(5), SIZES.size)
    # a kink: slope -1 up to S = 128, then exactly -0.5 (every seed, tiny noise)
    logy = np.where(SIZES <= 128, -1.0 * (u - np.log(128)), -0.5 * (u - np.log(128)))
    y = np.exp(logy[None, :] + 0.002 * rng.standard_normal((5, SIZES.size))).ravel()
    full, rng_ = straight_range(x, y, g)
    assert full.pvalue < 0.05 and full.curvature > 0
    assert rng_ is not None and rng_.sizes[0] >= 128 and rng_.sizes[-1] == 1024
    assert rng_.slope_low == pytest.approx(-0.5, abs=0.02)
    assert rng_.slope_high == pytest.approx(-0.5, abs=0.02)
    f = fit_rate(x[np.isin(x, rng_.sizes)], y[np.isin(x, rng_.sizes)], g[np.isin(x, rng_.sizes)])
    v = rate_claim(f, -0.5, straight=(full, rng_))
    assert v.verdict == "held" and "claim restricted to S 128..1024" in v.words
    assert v.values["range"] == [128.0, 1024.0]
    # a curve curved everywhere: no range, no claim
    curved = np.exp(0.4 * (u - u.mean()) ** 2 - 0.5 * u)[None, :] * np.exp(
        0.002 * rng.standard_normal((5, SIZES.size)))
    full2, none = straight_range(x, curved.ravel(), g)
    assert none is None
    v2 = rate_claim(fit_rate(x, curved.ravel(), g), -0.5, straight=(full2, none))
    assert v2.verdict == "inconclusive" and "significantly curved over every range" in v2.words
    # an exact power law is straight: p = 1 (rounding is not curvature)
    exact = np.concatenate([SIZES ** -0.5] * 5)
    assert straightness(x, exact, g).pvalue == 1.0


def test_fit_rate_errors_name_the_problem():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        fit_rate([1, 2, 3], [1, 2, 3], [0, 0, 0])
    with pytest.raises(ValueError, match="2 or more distinct x"):
        fit_rate([1, 2, 3, 3], [1, 2, 3, 3], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="finite"):
        fit_rate([1, 2], [np.nan, 1], [0, 1])
