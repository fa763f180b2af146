"""Claims that can fail: the bound claim on built stores, three-valued rate verdicts, rankings."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from cell_records import make_cell, make_record
from resdyn.experiments.base import Claim
from resdyn.experiments.checks import bound_claims
from resdyn.reports.build import outcomes_from_store
from resdyn.reports.render import write_report
from resdyn.sweeps.store import CellResult, Store

SIZES = [32, 64, 128, 256, 512, 1024]


def _store(path, bound, slope=-0.5, seeds=5, gap_noise=0.03):
    """A sample-size-quick store: two_spirals / resnet, 6 sizes x ``seeds``; gap = S^slope with
    per-seed noise; test error = gap + 0.05; test_error_bound = bound(S, test_error)."""
    rng = np.random.default_rng(0)
    with Store(path) as st:
        for seed, S in itertools.product(range(seeds), SIZES):
            gap = float(S ** slope * np.exp(gap_noise * rng.standard_normal()))
            err = gap + 0.05
            b = bound(S, err)
            cell = make_cell(model={"depth": 4}, sample_size=S, seed=seed)
            measures = {"test_error_bound": b, "test_error_bound.margin_loss": 0.01,
                        "test_error_bound.complexity": b - 0.3, "test_error_bound.confidence": 0.29,
                        "path_norm_bound": 10.0 * S ** -0.5 * (1 + 0.1 * seed)}
            st.write("sample-size-quick", CellResult(
                f"c{seed}-{S}", cell, {"error_gap": gap, "loss_gap": 2 * gap, "test_acc": 1 - err,
                                          "train_acc": 1 - err + gap}, measures))


def _claims(path, tmp_path):
    (out,) = outcomes_from_store(path, tmp_path / "figs", generic=False)
    return out, {c.text.split(":")[-1].strip(): c for c in out.claims}


def test_bound_claim_on_a_store_with_every_bound_vacuous_is_not_held(tmp_path):
    _store(tmp_path / "v.sqlite", lambda S, e: 2.83 + 0.1 * np.log(S))
    _, claims = _claims(tmp_path / "v.sqlite", tmp_path)
    c = claims["the assembled test-error bound is non-vacuous (below 1) in every cell"]
    # the bound does not depend on the seed: every seed's largest bound is equal, so the exact sign
    # test decides: 5 of 5 seeds at or above 1, p = 2^-5
    assert c.verdict == "not held" and not c.held
    assert c.measured.startswith("vacuous in every cell (30 of 30 have bound >= 1)")
    assert c.values["vacuous"] == 30 and c.values["dominant_term"] == "complexity"
    assert c.values["verdict"]["p_against"] == pytest.approx(0.5 ** 5) and "sign test" in c.test
    valid = claims["where it is non-vacuous, the assembled bound lies above the measured test error"]
    assert valid.verdict == "inconclusive" and "cannot fail" in valid.measured
    # the gap really decays like S^-1/2 in this store, so the rate claim can be held
    rate = claims["the generalization gap decays like S^-1/2"]
    assert rate.verdict == "held", rate.measured
    assert "p = " in rate.test and rate.values["p_equal"] > 0.05
    assert "straightness over S 32..1024" in rate.measured


def _bound_rows(bounds, errs):
    """Rows of 3 configurations x len(bounds[0]) seeds: bounds[c][s], errs[c][s]."""
    return [make_record(seed=s, sample_size=32 * (c + 1), metrics={"test_acc": 1 - errs[c][s]},
                        measures={"test_error_bound": bounds[c][s],
                                  "test_error_bound.margin_loss": 0.5 * bounds[c][s],
                                  "test_error_bound.complexity": 0.1,
                                  "test_error_bound.confidence": 0.2})
            for c in range(len(bounds)) for s in range(len(bounds[c]))]


def test_bound_claims_test_across_seeds_and_catch_violations():
    b = [[0.50, 0.52, 0.49, 0.51, 0.50], [0.60, 0.62, 0.61, 0.58, 0.60], [0.70, 0.69, 0.72, 0.71, 0.70]]
    e = [[0.10, 0.12, 0.11, 0.10, 0.09], [0.20, 0.21, 0.19, 0.20, 0.22], [0.35, 0.30, 0.33, 0.36, 0.34]]
    nv, valid = bound_claims(_bound_rows(b, e))
    assert nv.verdict == "held" and valid.verdict == "held"
    assert nv.values["largest_per_seed"] == {s: max(b[c][s] for c in range(3)) for s in range(5)}
    assert valid.values["smallest_margin_per_seed"] == pytest.approx(
        {s: min(b[c][s] - e[c][s] for c in range(3)) for s in range(5)})
    assert nv.values["median_tightness"] == pytest.approx(
        np.median([b[c][s] / e[c][s] for c in range(3) for s in range(5)]))
    # a bound below the test error in every seed: the validity claim is not held
    e_bad = [[0.6] * 5, e[1], e[2]]
    _, broken = bound_claims(_bound_rows(b, e_bad))
    assert broken.verdict == "not held" and broken.values["violated"] == 5
    # two seeds: too few for a decision either way
    few = bound_claims(_bound_rows([[0.5, 1.2]], [[0.1, 0.2]]))[0]
    assert few.verdict == "inconclusive" and "p = " in few.test
    assert bound_claims([make_record(metrics={"test_acc": 0.9})]) == []


def test_rate_claim_not_held_when_the_slope_is_far_and_report_shows_three_verdicts(tmp_path):
    _store(tmp_path / "f.sqlite", lambda S, e: 0.9 * (S / 32) ** -0.3, slope=-0.9)
    out, claims = _claims(tmp_path / "f.sqlite", tmp_path)
    rate = claims["the generalization gap decays like S^-1/2"]
    assert rate.verdict == "not held"
    assert rate.values["slope"] == pytest.approx(-0.9, abs=0.05)
    # every recorded measure is ranked against the gap, with intervals
    rank = {r["measure"]: r for r in out.tables["measures against the gap (rank correlation)"]}
    assert set(rank) >= {"path_norm_bound", "test_error_bound", "test_error_bound.complexity"}
    assert rank["path_norm_bound"]["kendall_tau"] > 0.5 and len(rank["path_norm_bound"]["tau_ci"]) == 2
    out.claims.append(Claim("a claim with no verdict yet", "n/a", "inconclusive", "none"))
    _, md = write_report([out], tmp_path / "rep")
    text = md.read_text()
    assert "| no |" in text and "| inconclusive |" in text
    data = json.loads((tmp_path / "rep" / "report-data.json").read_text())
    assert {c["verdict"] for c in data[out.name]["claims"]} >= {"not held", "inconclusive"}


def test_claim_accepts_bools_and_stored_held_and_rejects_other_verdicts():
    assert Claim("t", "m", True, "x").verdict == "held"
    assert Claim("t", "m", held=False, test="x").verdict == "not held"
    assert not Claim("t", "m", "inconclusive", "x").held
    with pytest.raises(ValueError, match="verdict must be one of held, not held, inconclusive"):
        Claim("t", "m", "maybe", "x")


DEAD_ZONE_SPEC = """
name = "dead-zone-quick"
description = "test"
[data]
name = "two_spirals"
[model]
family = "resnet"
width = 16
depth = 4
[train]
steps = 300
lr = 1e-2
[sweep]
model = [{ activation = "soft_threshold", tau = 0.5 }, { activation = "relu" }, { activation = "tanh" }]
weight_decay = [0.0, 0.03]
sample_size = [128]
seed = [0, 1, 2]
[measures.dead_zone]
"""


def test_dead_zone_term_is_positive_under_weight_decay_and_zero_without(tmp_path):
    from click.testing import CliRunner

    from resdyn.cli.main import main
    from resdyn.experiments.dead_zone import analyze

    spec = tmp_path / "dead-zone-quick.toml"
    spec.write_text(DEAD_ZONE_SPEC)
    store = tmp_path / "dz.sqlite"
    res = CliRunner().invoke(main, ["run", str(spec), "--store", str(store), "--quiet", "--threads", "1"])
    assert res.exit_code == 0, res.output
    with Store(store, create=False) as st:
        rows = st.records()
    dz = [r for r in rows if r.cell.model.activation == "soft_threshold"]
    for r in dz:
        m, wd = r.measures, r.cell.training.config.weight_decay
        if wd > 0:
            # every unit's level is inside the band for the largest ||x~|| of the two-spirals pool
            # (standardised inputs: ||x~|| < 10), so every sample is certified dead
            assert m["dead_zone.mu"] * 10 < 0.5 and m["dead_zone.dead_fraction"] == 1.0
            assert m["dead_zone"] > 0
        else:
            assert m["dead_zone.mu"] > 100 and m["dead_zone"] == 0.0
    out = analyze(rows, None, "dead-zone-quick")
    # wherever relu does not reach 0.9 test accuracy the regime is labelled collapsed and makes no claim
    for wd, label in out.data["regimes"].items():
        relu = [r.metrics["test_acc"] for r in rows if r.cell.model.activation == "relu"
                and r.cell.training.config.weight_decay == wd]
        assert (label == "trains") == (np.mean(relu) >= 0.9)
        if label != "trains":
            assert not any(f"weight decay {wd:g})" in c.text for c in out.claims)
    assert "measures against the gap (rank correlation)" in out.tables


def _dz_rows():
    """Synthetic dead-zone rows, 5 seeds: weight decay 0 and 0.003 train (relu 0.95), 0.03 collapses
    (every activation 0.67, term 0.1). The term is 0 wherever the networks train. Seed effects on the
    gap are large (0.1 s) but the dead-zone gap is 0.01 below relu's within every seed."""
    rows = []
    for wd, seed, (act, tau) in itertools.product(
            (0.0, 0.003, 0.03), range(5), [("relu", None), ("tanh", None), ("soft_threshold", 0.1),
                                           ("soft_threshold", 0.5)]):
        model = {"width": 16, "activation": act, **({"tau": tau} if tau else {})}
        collapsed = wd == 0.03
        acc = 0.67 if collapsed else 0.95 - 0.002 * (act != "relu")
        gap = 0.1 * seed + 0.05 - 0.01 * (act == "soft_threshold") + 0.001 * (tau or 0)
        term = 0.1 if collapsed and tau else 0.0
        rows.append(make_record(spec="dead-zone", seed=seed, sample_size=256, model=model,
                                train={"weight_decay": wd},
                                metrics={"test_acc": acc, "error_gap": gap, "loss_gap": gap,
                                         "train_acc": acc + gap},
                                measures={"dead_zone": term} if tau else {}))
    return rows


def test_dead_zone_claims_are_paired_made_where_networks_train_and_not_held_when_the_term_is_zero():
    from resdyn.experiments.dead_zone import analyze

    out = analyze(_dz_rows(), None, "dead-zone")
    assert out.data["regimes"][0.03].startswith("collapsed: relu test accuracy 0.670 < 0.9")
    claims = {c.text: c for c in out.claims}
    assert not any("0.03)" in t for t in claims)  # the collapsed regime is an illustration only
    term = claims["soft_threshold: the dead-zone term is positive where the networks train "
                  "(weight decay 0.003)"]
    assert term.verdict == "not held" and "the term is 0 in every seed" in term.measured
    assert "sign test" in term.test and term.values["verdict"]["p_against"] == pytest.approx(0.5 ** 5)
    assert "test accuracy relu 0.950" in term.measured
    assert "soft_threshold - relu (best) -0.002" in term.measured
    for wd in ("0", "0.003"):
        gap = claims[f"soft_threshold generalizes better than relu: smaller error gap (weight decay {wd}, "
                     "paired by seed)"]
        # paired by seed: the seed effect (0.1 per seed) cancels, the difference is -0.01 + 0.0003
        assert gap.verdict == "held", gap.measured
        assert gap.values["paired"] == pytest.approx({s: -0.01 + 0.0003 for s in range(5)})
    table = out.tables["gap and dead-zone term by activation"]
    assert {r["regime"] for r in table if r["weight_decay"] == 0.03} == {out.data["regimes"][0.03]}


def test_welch_tost_matches_scipy_one_sided_tests_and_decides_three_ways():
    from scipy import stats

    from resdyn.analysis.summary import welch_tost

    a, b = [0.80, 0.82, 0.81, 0.83], [0.805, 0.815, 0.80]
    t = welch_tost(a, b, 0.03)
    p_lo = stats.ttest_ind(np.add(a, 0.03), b, equal_var=False, alternative="greater").pvalue
    p_hi = stats.ttest_ind(np.subtract(a, 0.03), b, equal_var=False, alternative="less").pvalue
    assert t.pvalue == pytest.approx(max(p_lo, p_hi), rel=1e-10)
    assert t.diff == pytest.approx(np.mean(a) - np.mean(b)) and t.verdict == "held"
    assert welch_tost([0.9, 0.91, 0.92], [0.80, 0.81, 0.80], 0.03).verdict == "not held"
    assert welch_tost([0.7, 0.9, 0.8], [0.80, 0.85, 0.75], 0.03).verdict == "inconclusive"


def test_report_json_has_no_nan_and_tables_name_infinite_and_not_applicable(tmp_path):
    from resdyn.experiments.base import ExperimentOutcome

    table = [{"a": float("nan"), "b": float("inf"), "c": None, "d": 1.5}]
    claim = Claim("c", "m", "inconclusive", "t", {"v": float("nan"), "w": float("inf")})
    o = ExperimentOutcome("x", tables={"t": table}, claims=[claim])
    _, md = write_report([o], tmp_path)
    assert "| not applicable | infinite | not applicable | 1.5 |" in md.read_text()
    raw = (tmp_path / "report-data.json").read_text()
    assert "NaN" not in raw and "Infinity" not in raw
    data = json.loads(raw)["x"]
    assert data["claims"][0]["values"] == {"v": None, "w": "infinite"}
    assert data["tables"]["t"][0] == {"a": None, "b": "infinite", "c": None, "d": 1.5}


def test_the_gap_rate_claim_is_refitted_on_the_straight_range_it_names():
    """The gap falls like 1/S up to S = 128 and like S^-1/2 beyond (5 seeds, 0.2% noise): the
    claim is made on S = 128..1024, where the slope is -1/2 (held); over all six sizes the
    least-squares slope would be -0.686. The table 'gap against S' gives each size's seed mean."""
    from resdyn.experiments import sample_size

    sizes = np.array([32, 64, 128, 256, 512, 1024.0])
    u = np.log(sizes)
    log_gap = np.where(sizes <= 128, -(u - np.log(128)), -0.5 * (u - np.log(128))) + np.log(0.05)
    rng = np.random.default_rng(3)
    rows = []
    for s in range(5):
        gaps = np.exp(log_gap + 0.002 * rng.standard_normal(sizes.size))
        rows += [make_record(spec="sample-size", seed=s, sample_size=int(S), model={"depth": 4},
                             metrics={"error_gap": float(g), "loss_gap": float(g), "test_acc": 0.9,
                                      "train_acc": 0.9 + float(g)})
                 for S, g in zip(sizes, gaps, strict=True)]
    out = sample_size.analyze(rows)
    claim = out.claims[0]
    assert claim.verdict == "held" and list(claim.values["range"]) == [128.0, 1024.0]
    assert claim.values["slope"] == pytest.approx(-0.5, abs=0.01)
    fit = out.data["fits"]["two_spirals / resnet"]["error_gap"]
    assert fit["fit"]["slope"] == pytest.approx(-0.686, abs=0.01)
    table = {r["S"]: r for r in out.tables["gap against S"]}
    assert sorted(table) == [32, 64, 128, 256, 512, 1024] and {r["seeds"] for r in table.values()} == {5}
    for S, want in ((32, 0.2), (64, 0.1), (128, 0.05), (256, 0.0354), (512, 0.025), (1024, 0.0177)):
        assert table[S]["error_gap"] == pytest.approx(want, rel=0.01)
