"""Kendall tau and granulated tau against scipy.stats.kendalltau on synthetic tables."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from cell_records import make_record
from resdyn.analysis.ranking import cell_table, granulated_tau, kendall_tau, rank_measures


def test_kendall_tau_b_matches_scipy_with_ties_and_batches():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(5, 12)).astype(float)  # many ties
    y = rng.integers(0, 5, size=(5, 12)).astype(float)
    got = kendall_tau(x, y)
    for i in range(5):
        assert got[i] == pytest.approx(stats.kendalltau(x[i], y[i]).statistic, abs=1e-12)
    # NaN entries drop their pairs, like scipy with nan_policy='omit'
    x[0, 3] = np.nan
    assert kendall_tau(x[0], y[0]) == pytest.approx(
        stats.kendalltau(x[0], y[0], nan_policy="omit").statistic, abs=1e-12)
    assert np.isnan(kendall_tau(np.ones(5), np.arange(5.0)))


def _rows(in_dim_follows_width: bool = False):
    """A synthetic sweep: axes width (3) x sample_size (4), 3 seeds. 'good' follows the gap,
    'anti' reverses it, 'width_only' orders only by width."""
    rng = np.random.default_rng(3)
    rows = []
    for w, S, seed in itertools.product([8, 16, 32], [32, 64, 128, 256], [0, 1, 2]):
        gap = 0.02 * w ** 0.5 / S ** 0.5 + 0.002 * rng.standard_normal()
        model = {"width": w, "depth": 4, **({"in_dim": w // 8} if in_dim_follows_width else {})}
        rows.append(make_record(seed=seed, sample_size=S, model=model, metrics={"error_gap": gap},
                                measures={"good": gap + 0.001 * rng.standard_normal(), "anti": -gap,
                                          "width_only": float(w),
                                          "test_error_bound.measured_gap": gap}))
    return rows


def test_granulated_tau_is_the_mean_over_axes_of_within_group_scipy_taus():
    t = cell_table(_rows())
    assert t.axis_names == ["model.width", "sample_size"] and len(t.cells) == 12 and t.seeds == [0, 1, 2]
    assert "test_error_bound.measured_gap" not in t.measures  # the gap itself is not a measure
    m, g = np.nanmean(t.measures["good"], 0), np.nanmean(t.gap, 0)
    Psi, psi = granulated_tau(m, g, t.axes)
    by_hand = []
    for a in range(2):
        taus = []
        for val in np.unique(t.axes[:, 1 - a]):
            idx = np.flatnonzero(t.axes[:, 1 - a] == val)
            taus.append(stats.kendalltau(m[idx], g[idx]).statistic)
        by_hand.append(np.mean(taus))
    assert psi == pytest.approx(by_hand, abs=1e-12)
    assert Psi == pytest.approx(np.mean(by_hand), abs=1e-12)


def test_rank_measures_values_and_per_seed_t_intervals():
    res = {r.measure: r for r in rank_measures(cell_table(_rows()))}
    t = cell_table(_rows())
    m, g = np.nanmean(t.measures["good"], 0), np.nanmean(t.gap, 0)
    assert res["good"].tau == pytest.approx(stats.kendalltau(m, g).statistic, abs=1e-12)
    assert res["anti"].tau == pytest.approx(-1.0) and res["anti"].granulated == pytest.approx(-1.0)
    lo, hi = res["good"].tau_ci
    taus = [stats.kendalltau(t.measures["good"][i], t.gap[i]).statistic for i in range(len(t.seeds))]
    assert res["good"].tau_seed == pytest.approx(np.mean(taus), abs=1e-12)
    half = stats.t.ppf(0.975, len(taus) - 1) * np.std(taus, ddof=1) / np.sqrt(len(taus))
    assert (lo, hi) == pytest.approx((np.mean(taus) - half, np.mean(taus) + half), abs=1e-12)
    assert res["good"].seeds == len(t.seeds)
    assert res["good"].tau > 0.8
    # width_only is tied within every width: its psi along sample_size is undefined, along width it is +1
    assert res["width_only"].psi["model.width"] == pytest.approx(1.0)
    assert np.isnan(res["width_only"].psi["sample_size"])
    assert res["width_only"].granulated == pytest.approx(1.0)
    row = res["good"].as_row()
    assert row["cells"] == 12 and row["measure"] == "good" and "psi[sample_size]" in row


def test_keys_that_split_cells_alike_are_one_axis():
    # in_dim follows width exactly: the same partition, so not a second axis
    t = cell_table(_rows(in_dim_follows_width=True))
    assert t.axis_names == ["model.in_dim (+1)", "sample_size"] and t.axes.shape == (12, 2)
