"""Log-log slope fits: coverage of the 95% interval, clustering by seed, bootstrap, errors."""

import math

import numpy as np
import pytest

from resdyn.analysis.fits import bootstrap_slope, fit_loglog


def test_exact_line_recovered():
    x = np.array([100, 200, 400, 800, 1600.0])
    r = fit_loglog(x, 3.0 * x ** -0.5)
    assert r.slope == pytest.approx(-0.5, abs=1e-12)
    assert r.intercept == pytest.approx(math.log(3.0), abs=1e-10)
    assert r.n == 5 and r.df == 3 and r.method == "ols"
    assert r.covers(-0.5) and not r.covers(0.0)


def test_coverage_of_known_slope_in_100_trials(capsys):
    x = np.array([64, 128, 256, 512, 1024, 2048.0])
    covered = 0
    for trial in range(100):
        rng = np.random.default_rng(trial)
        y = 2.0 * x ** -0.5 * np.exp(0.2 * rng.standard_normal(x.size))
        covered += fit_loglog(x, y).covers(-0.5)
    with capsys.disabled():
        print(f"\n[fits] OLS 95% interval covered slope -0.5 in {covered}/100 trials")
    assert 90 <= covered <= 99


def test_clustered_coverage_in_100_trials(capsys):
    x = np.tile([64, 128, 256, 512, 1024.0], 4)
    seeds = np.repeat(np.arange(4), 5)
    covered = 0
    for trial in range(100):
        rng = np.random.default_rng(1000 + trial)
        seed_slope = -0.5 + 0.05 * rng.standard_normal(4)  # a random slope per seed
        y = np.exp(seed_slope[seeds] * np.log(x) + 0.1 * rng.standard_normal(x.size))
        r = fit_loglog(x, y, clusters=seeds)
        assert r.method == "cluster_slopes" and r.df == 3 and r.n == 20
        covered += r.covers(-0.5)
    with capsys.disabled():
        print(f"[fits] per-seed-slope 95% interval covered -0.5 in {covered}/100 trials")
    assert 90 <= covered <= 99


def test_clusters_are_not_pooled():
    # Two seeds with slopes -0.4 and -0.6: the estimate is their mean, with G - 1 = 1 df.
    x = np.array([10, 20, 40, 10, 20, 40.0])
    y = np.concatenate([x[:3] ** -0.4, 5 * x[3:] ** -0.6])
    r = fit_loglog(x, y, clusters=[0, 0, 0, 1, 1, 1])
    assert r.slope == pytest.approx(-0.5)
    assert r.stderr == pytest.approx(0.1)  # sd(-0.4, -0.6) / sqrt 2
    assert r.df == 1


def test_pvalue_and_bootstrap():
    x = np.tile([64, 128, 256, 512.0], 8)
    rng = np.random.default_rng(0)
    y = x ** -0.5 * np.exp(0.05 * rng.standard_normal(x.size))
    r = fit_loglog(x, y)
    assert r.pvalue < 1e-6
    lo, hi = bootstrap_slope(x, y, np.repeat(np.arange(8), 4), n_boot=500, seed=1)
    assert lo < -0.5 < hi and hi - lo < 0.2
    flat = fit_loglog(x, np.exp(0.05 * rng.standard_normal(x.size)))
    assert flat.pvalue > 0.01


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="y must be > 0"):
        fit_loglog([1, 2, 3], [1.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="x must be > 0"):
        fit_loglog([0, 2, 3], [1.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="same length"):
        fit_loglog([1, 2], [1.0])
    with pytest.raises(ValueError, match="at least 2 clusters"):
        fit_loglog([1, 2, 3], [1, 2, 3.0], clusters=[0, 0, 0])
