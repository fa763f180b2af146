"""Every statistical rule a verdict uses, checked by simulation (fixed seeds, 400+ sweeps each):
the coverage of its interval (>= 0.93), the size of its test (<= 0.07), and for the straightness
test its power against the digits-like curvature (>= 0.8 at 5 seeds) with <= 0.07 false alarms.

Noise model of the rate sweeps (as tests/test_rates.py): 6 sizes 32..1024, nested subsamples,
log y = a_g + b_g log S + c (log S - mean)^2 + e_gj with e_j = sum_{i >= j} z_i,
Var e_j = 0.21^2 * 32 / S_j (heteroscedastic and correlated within a seed), b_g = b + N(0, 0.05^2):
a seed slope SD near 0.07, the mnist value of issue 23. The digits-like curvature: the local slope
runs from -0.66 at S = 32 to -0.35 at S = 1024, c = 0.31 / (2 log 32).
The numbers printed are those quoted in docs/theory.md, section 16.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from resdyn.analysis.ranking import kendall_tau, t_interval
from resdyn.analysis.rates import fit_rate, rate_claim, straight_range, straightness
from resdyn.analysis.summary import mean_ci, welch_tost
from resdyn.analysis.verdicts import equivalence_test, joint, mean_test, sign_test, units_for_power

SIZES = np.array([32, 64, 128, 256, 512, 1024], dtype=float)
U = np.log(SIZES) - np.log(SIZES).mean()
CURVE = 0.31 / (2 * (U[-1] - U[0]))  # digits-like: local slope -0.66 -> -0.35
REPS = 400


def nested_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma0: float = 0.21) -> np.ndarray:
    var = sigma0**2 * SIZES[0] / SIZES
    inc = np.sqrt(np.diff(var[::-1], prepend=0.0))[::-1]
    z = rng.standard_normal((*shape, SIZES.size)) * inc
    return np.cumsum(z[..., ::-1], axis=-1)[..., ::-1]


def sweeps(rng: np.random.Generator, seeds: int, b: float = -0.5, c: float = 0.0, reps: int = REPS,
           heavy: bool = False) -> np.ndarray:
    """log y (reps, seeds, 6) of the module docstring (heavy: t_3 increments instead of normal)."""
    e = nested_noise(rng, (reps, seeds))
    if heavy:
        e = e * rng.standard_t(3, (reps, seeds, 1)) / math.sqrt(3)
    bg = b + 0.05 * rng.standard_normal((reps, seeds, 1))
    a = 0.3 * rng.standard_normal((reps, seeds, 1))
    return a + bg * U + c * U**2 + e


def grid(seeds: int) -> tuple[np.ndarray, np.ndarray]:
    return np.tile(SIZES, seeds), np.repeat(np.arange(seeds), SIZES.size)


def digits_like(rng: np.random.Generator, seeds: int, c: float, sd: np.ndarray,
                reps: int = REPS) -> np.ndarray:
    """log gap (reps, seeds, 6) with noise independent across sizes, sd per size ``sd``, slope
    -0.505 + N(0, 0.02^2) per seed, curvature c (the gap's noise at large S is the test set's and
    the training run's, not that of a nested mean)."""
    b = -0.505 + 0.02 * rng.standard_normal((reps, seeds, 1))
    a = 0.3 * rng.standard_normal((reps, seeds, 1))
    return a + b * U + c * U**2 + sd * rng.standard_normal((reps, seeds, SIZES.size))


# The digits noise as issue 23 measured it: with 3 seeds its curvature test gave p = 0.046 and
# 0.065, t = 4.5 and 3.6 on 2 df, i.e. sd(c_g) = c / (t / sqrt 3) = 0.017 to 0.021, which a
# constant per-point sd of 0.056 gives (sd(c_g) = sd / 2.94 for these 6 sizes).
ISSUE_DIGITS = np.full(SIZES.size, 0.056)
# The digits noise of a 5-seed run of the full sample-size spec (resnet, docs/theory.md 11): the
# across-seed sd of log gap falls from 0.15 at S = 32 to 0.07 at S = 1024; sd(c_g) = 0.036.
MEASURED_DIGITS = 0.15 * (SIZES / 32) ** -0.22


def test_straightness_false_alarms_and_power_against_the_digits_curvature():
    rng = np.random.default_rng(2312)
    power, alarms = {}, {}
    for label, sd, counts in (("issue digits noise", ISSUE_DIGITS, (3, 4, 5)),
                              ("measured digits noise", MEASURED_DIGITS, (5, 8, 10))):
        for G in counts:
            x, g = grid(G)
            straight = digits_like(rng, G, 0.0, sd)
            curved = digits_like(rng, G, CURVE, sd)
            alarms[label, G] = np.mean([straightness(x, np.exp(s).ravel(), g).pvalue < 0.05
                                        for s in straight])
            power[label, G] = np.mean([straightness(x, np.exp(s).ravel(), g).pvalue < 0.05
                                       for s in curved])
    for G in (3, 5):  # the nested noise of the rate simulations (mnist's seed-slope SD)
        x, g = grid(G)
        alarms["nested noise", G] = np.mean([straightness(x, np.exp(s).ravel(), g).pvalue < 0.05
                                             for s in sweeps(rng, G)])
        power["nested noise", G] = np.mean([straightness(x, np.exp(s).ravel(), g).pvalue < 0.05
                                            for s in sweeps(rng, G, b=-0.505, c=CURVE)])
    x, g = grid(5)
    alarms["t_3 nested noise", 5] = np.mean([straightness(x, np.exp(s).ravel(), g).pvalue < 0.05
                                             for s in sweeps(rng, 5, heavy=True)])
    print("\n[straightness] false alarms "
          + ", ".join(f"{k[0]} {k[1]} seeds {v:.3f}" for k, v in alarms.items())
          + "\n[straightness] power against the digits curvature "
          + ", ".join(f"{k[0]} {k[1]} seeds {v:.3f}" for k, v in power.items()))
    assert all(a <= 0.07 for a in alarms.values())
    assert power["issue digits noise", 5] >= 0.80
    assert power["measured digits noise", 10] >= 0.80  # why the full sample-size specs run 10 seeds
    assert power["issue digits noise", 3] < power["issue digits noise", 5]


def test_slope_interval_covers_and_rate_tests_keep_their_size_with_3_and_5_seeds():
    rng = np.random.default_rng(77)
    for G in (3, 5):
        x, g = grid(G)
        fits = [fit_rate(x, np.exp(s).ravel(), g) for s in sweeps(rng, G)]
        cover = np.mean([f.covers(-0.5) for f in fits])
        faster = np.mean([rate_claim(f, -0.5, "faster", 0.0).verdict == "held" for f in fits])
        tost = np.mean([rate_claim(f, -0.35, "equivalent", 0.15).verdict == "held" for f in fits])
        print(f"\n[rates, {G} seeds] 95% coverage {cover:.3f}; 'faster than S^-1/2' held at b = -1/2: "
              f"{faster:.3f}; TOST held at the margin (b0 = -0.35, b = -0.5): {tost:.3f}")
        assert cover >= 0.93 and faster <= 0.07 and tost <= 0.07


def test_claim_over_the_straight_range_keeps_its_size_when_the_curve_is_straight():
    """The whole procedure (straightness gate, range search, TOST on the range) at the margin."""
    rng = np.random.default_rng(5)
    x, g = grid(5)
    held = []
    for s in sweeps(rng, 5, b=-0.65):
        y = np.exp(s).ravel()
        full, rng_ = straight_range(x, y, g)
        keep = np.isin(x, rng_.sizes) if rng_ is not None else np.ones_like(x, dtype=bool)
        v = rate_claim(fit_rate(x[keep], y[keep], g[keep]), -0.5, straight=(full, rng_))
        held.append(v.verdict == "held")
    print(f"\n[rate claim with range search] held at b = -0.65 (the TOST margin): {np.mean(held):.3f}")
    assert np.mean(held) <= 0.07


def test_linear_scale_fits_with_values_at_or_below_zero_cover_and_keep_size():
    rng = np.random.default_rng(11)
    for G in (3, 5):
        x, g = grid(G)
        # multiplicative seed and nested noise as above, plus additive test-set noise (sd 0.03):
        # the mean gap at S = 1024 is 0.053, so many sweeps have a value <= 0; keep 400 of those
        y = 0.3 * (SIZES / 32) ** -0.5 * np.exp(sweeps(rng, G, reps=8 * REPS) + 0.5 * U)
        y = y + 0.03 * rng.standard_normal(y.shape)
        y = y[(y <= 0).any(axis=(1, 2))][:REPS]
        fits = [fit_rate(x, s.ravel(), g) for s in y]
        assert all(f.method == "cluster_nls" for f in fits)
        cover = np.mean([f.covers(-0.5) for f in fits])
        size = np.mean([f.p_equal(-0.5) < 0.05 for f in fits])
        alarms = np.mean([straightness(x, s.ravel(), g).pvalue < 0.05 for s in y])
        print(f"\n[rates with values <= 0, {G} seeds, {len(fits)} sweeps] coverage {cover:.3f}, "
              f"size of H0: b = -1/2 {size:.3f}, split-halves straightness false alarms {alarms:.3f}")
        assert len(fits) >= 400
        assert cover >= 0.93 and size <= 0.07 and alarms <= 0.07


def test_one_sample_rules_size_and_coverage():
    rng = np.random.default_rng(3)
    out = {}
    for G in (3, 5):
        normal = rng.normal(0.0, 1.0, (REPS, G))
        heavy = rng.standard_t(3, (REPS, G))  # symmetric, heavy-tailed
        out[f"t size normal {G}"] = np.mean([mean_test(v, 0.0, "greater").verdict == "held" for v in normal])
        out[f"t size t3 {G}"] = np.mean([mean_test(v, 0.0, "less").verdict == "held" for v in heavy])
        out[f"t not-held rate {G}"] = np.mean([mean_test(v, 0.0, "greater").verdict == "not held"
                                               for v in normal])
        out[f"coverage {G}"] = np.mean([(c := mean_ci(v)).lo <= 0.0 <= c.hi for v in normal])
        out[f"TOST size {G}"] = np.mean([equivalence_test(v + 0.5, 0.0, 0.5).verdict == "held"
                                         for v in normal])
        signs = rng.integers(0, 2, (REPS, G)) * 2.0 - 1.0
        out[f"sign size {G}"] = np.mean([sign_test(v, 0.0).verdict == "held" for v in signs])
    # a limitation, printed and documented (docs/theory.md, 16), not asserted: strongly skewed
    # values (exponential) make the one-sided t test anti-conservative in the direction of the tail
    skew = rng.exponential(1.0, (REPS, 3)) - 1.0
    skewed = np.mean([mean_test(v, 0.0, "less").verdict == "held" for v in skew])
    print("\n[one-sample rules] " + ", ".join(f"{k} {v:.3f}" for k, v in out.items())
          + f"; (limitation) t size, exponential values, 3 seeds, short tail side: {skewed:.3f}")
    for k, v in out.items():
        assert (v >= 0.93) if k.startswith("coverage") else (v <= 0.07), k


def test_joint_rule_size_and_welch_tost_size():
    rng = np.random.default_rng(4)
    held, wrongly_not_held, welch = [], [], []
    for _ in range(REPS):
        # three parts: two clearly true, one exactly at its boundary
        parts = [("a", mean_test(rng.normal(1.0, 0.3, 5), 0.0)),
                 ("b", mean_test(rng.normal(1.0, 0.3, 5), 0.0)),
                 ("c", mean_test(rng.normal(0.0, 0.3, 5), 0.0))]
        held.append(joint(parts).verdict == "held")
        true_parts = [(k, mean_test(rng.normal(0.0, 0.3, 5), -0.0001)) for k in "abc"]
        wrongly_not_held.append(joint(true_parts).verdict == "not held")
        a, b = rng.normal(0.80, 0.02, 5), rng.normal(0.77, 0.03, 5)  # |d| = margin 0.03
        welch.append(welch_tost(a, b, 0.03).verdict == "held")
    print(f"\n[joint] held with one part at its boundary {np.mean(held):.3f}; not held with every part "
          f"true {np.mean(wrongly_not_held):.3f}; [Welch TOST] held at the margin {np.mean(welch):.3f}")
    assert np.mean(held) <= 0.07 and np.mean(wrongly_not_held) <= 0.07 and np.mean(welch) <= 0.07


def test_per_seed_kendall_tau_interval_covers_its_estimand():
    """12 cells; a measure = true gap + noise per seed; the estimand E[tau_s] by Monte Carlo."""
    rng = np.random.default_rng(9)
    gap = np.linspace(0.0, 1.0, 12)

    def draw(n: int, seeds: int) -> tuple[np.ndarray, np.ndarray]:
        g = gap + 0.3 * rng.standard_normal((n, seeds, 12))
        m = gap + 0.3 * rng.standard_normal((n, seeds, 12))
        return m, g

    m, g = draw(20000, 1)
    truth = float(np.mean(kendall_tau(m[:, 0], g[:, 0])))
    res = {}
    for G in (3, 5):
        m, g = draw(REPS, G)
        taus = kendall_tau(m, g)  # (REPS, G)
        res[G] = np.mean([(iv := t_interval(t))[1] <= truth <= iv[2] for t in taus])
    print(f"\n[per-seed tau] E[tau_s] = {truth:.3f}; 95% t-interval coverage {res}")
    assert all(v >= 0.93 for v in res.values())


@pytest.mark.parametrize("G", [5])
def test_seed_power_for_the_equivalence_claim_at_the_mnist_noise(G):
    """The power calculation of docs/theory.md: TOST |b + 1/2| < 0.15 held when b = -1/2, seed
    slopes SD 0.08 (mnist's upper value)."""
    rng = np.random.default_rng(8)
    power = {}
    for n in (3, 4, 5, 6, 8, 10):
        b = -0.5 + 0.08 * rng.standard_normal((2000, n))
        m, se = b.mean(1), b.std(1, ddof=1) / np.sqrt(n)
        q = stats.t.ppf(0.95, n - 1)
        power[n] = float(np.mean((m - q * se > -0.65) & (m + q * se < -0.35)))
    print(f"\n[TOST power at b = -1/2, seed SD 0.08] {power}")
    assert power[G] >= 0.8 and power[3] < 0.8


def test_units_for_power_matches_the_tables_and_the_simulated_t_test():
    """Sample sizes of a one-sided one-sample t test (G*Power's "means: difference from constant",
    one tail, alpha 0.05): d = 0.5 -> 27 at power 0.8 and 45 at 0.95; d = 0.8 -> 12; d = 0.2 -> 156.
    At the n it gives, mean_test rejects in about ``power`` of simulated normal samples, and at
    n - 3 in fewer."""
    assert units_for_power(0.5, 0.05, 0.8) == 27
    assert units_for_power(0.5, 0.05, 0.95) == 45
    assert units_for_power(0.8, 0.05, 0.8) == 12
    assert units_for_power(0.2, 0.05, 0.8) == 156
    # A smaller level or a smaller effect needs more units; a mean on the bound needs infinitely many.
    assert units_for_power(0.5, 0.01, 0.8) > 27 and units_for_power(0.4, 0.05, 0.8) > 27
    assert units_for_power(0.0) is None and units_for_power(-0.3) is None
    assert units_for_power(1e-4, most=10_000) is None
    with pytest.raises(ValueError, match="alpha"):
        units_for_power(0.5, 0.6)
    with pytest.raises(ValueError, match="power"):
        units_for_power(0.5, 0.05, 0.01)
    with pytest.raises(ValueError, match="most"):
        units_for_power(0.5, most=1)
    rng = np.random.default_rng(11)
    d, n = 0.6, units_for_power(0.6, 0.05, 0.8)
    rate = {m: float(np.mean([mean_test(rng.normal(-d, 1.0, m), 0.0, "less").verdict == "held"
                              for _ in range(2000)])) for m in (n - 3, n)}
    print(f"\n[power of mean_test at d = 0.6, n = {n - 3}, {n}] {rate}")
    assert 0.8 - 0.03 < rate[n] < 0.8 + 0.06  # 2000 draws: binomial SE 0.009
    assert rate[n - 3] < 0.78


def test_equivalence_test_against_scipy_one_sample_t_tests():
    """TOST |E v - 0.825| < 0.125, i.e. 0.7 < E v < 0.95: p_for is the larger of scipy's two
    one-sided p-values; p_against the smaller p of "E v > 0.95" and "E v < 0.7"."""
    inside = [0.88, 0.89, 0.90]
    v = equivalence_test(inside, 0.825, 0.125)
    lo = stats.ttest_1samp(inside, 0.7, alternative="greater").pvalue
    hi = stats.ttest_1samp(inside, 0.95, alternative="less").pvalue
    assert v.verdict == "held" and v.p_for == pytest.approx(max(lo, hi), rel=1e-12)
    assert v.p_for == pytest.approx(0.004566305693137743, rel=1e-9)
    assert v.p_against == pytest.approx(stats.ttest_1samp(inside, 0.95, alternative="greater").pvalue,
                                        rel=1e-12)
    # With half the margin (0.7625 < E v < 0.8875) the same values are not shown inside.
    assert equivalence_test(inside, 0.825, 0.0625).verdict == "inconclusive"
    above = [1.20, 1.25, 1.30]
    out = equivalence_test(above, 0.825, 0.125)
    assert out.verdict == "not held" and out.p_against == pytest.approx(
        stats.ttest_1samp(above, 0.95, alternative="greater").pvalue, rel=1e-12)
