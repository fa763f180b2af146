"""Every claim of every shipped reproduction goes through the one rule (resdyn.analysis.verdicts):
its verdict names a test and its p-value, or says 'inconclusive' and why.

The quick stores are those of tests/report_stores.py: each shipped quick spec with its whole grid
and fewer training steps (a certificate spec also fewer posterior steps and draws), so every claim the
reproduction makes is made here, from real training runs, in about a minute. Two reproductions'
claims that no quick store reaches (the mean-field gradient-descent claim, a full-spec only, and
the certificate claims with more than one seed) are checked on built rows below.
"""

from __future__ import annotations

import math
import re

import pytest

from report_stores import CUSTOM, SHIPPED, build
from resdyn.analysis.verdicts import Verdict
from resdyn.experiments.base import Claim
from resdyn.reports.build import outcomes_from_store

P_VALUE = re.compile(r"p = (\d\.\d+(e-?\d+)?|\d+(\.\d+)?(e-?\d+)?)")
REPRODUCTIONS = ("sample-size-quick", "depth-quick", "dead-zone-quick", "mean-field-quick",
                 "dnl-convergence-quick", "certificates-quick")


def check_claim(c: Claim) -> None:
    """The rule's promise for one claim: a named test with its p-value, or 'inconclusive: why'."""
    v = c.values.get("verdict")
    assert isinstance(v, dict), f"{c.text!r} was not decided by resdyn.analysis.verdicts"
    assert v["verdict"] == c.verdict and v["test"], c.text
    assert v["test"] in c.test, c.text
    if c.verdict == "inconclusive":
        assert "inconclusive: " in c.measured and v["reason"], c.text
        assert v["reason"] in c.measured, c.text
    else:
        assert v["pvalue"] is not None and 0.0 <= v["pvalue"] < v["alpha"], (c.text, v)
        assert P_VALUE.search(c.test) and P_VALUE.search(c.measured), c.text
        assert f"{c.verdict} (" in c.measured, c.text
    if v["p_for"] is not None:
        assert P_VALUE.search(c.test), c.text
        assert v["n"] >= 1 and v["unit"], c.text
        assert math.isfinite(v["p_for"]) and math.isfinite(v["p_against"]), c.text


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    assert set(REPRODUCTIONS) <= set(SHIPPED) | set(CUSTOM)
    base = tmp_path_factory.getbasetemp()
    out = {}
    for name in REPRODUCTIONS:
        (o,) = outcomes_from_store(build(base, name), base / "verdict-figs", generic=False)
        out[name] = o
    return out


@pytest.mark.parametrize("name", REPRODUCTIONS)
def test_every_claim_of_the_quick_store_names_its_test_or_says_why_not(outcomes, name):
    o = outcomes[name]
    assert o.claims, f"{name}: no claim at all"
    for c in o.claims:
        check_claim(c)
    print(f"\n{name}: " + "; ".join(f"{c.verdict}" for c in o.claims))


def test_check_claim_rejects_a_claim_decided_without_the_rule():
    with pytest.raises(AssertionError):
        check_claim(Claim("x", "ratio 1.05", "held", "ratio <= 1.1"))
    fake = Verdict("inconclusive", "t", 0.3, 0.4, "seed", 3, "").as_dict()
    with pytest.raises(AssertionError):
        check_claim(Claim("x", "m", "inconclusive", "t; p = 0.3", {"verdict": fake}))


def _cert_records(tmp_path, seeds: int, ratio: float) -> list:
    """Certificate records of depths 4, 16, 64 and both priors, the certificate at L = 64
    ``ratio`` times the one at L = 16."""
    from resdyn.sweeps import expand, load_spec
    from resdyn.sweeps.records import CellRecord

    spec = tmp_path / "c.toml"
    spec.write_text(f"""name = "c"
[data]
name = "two_spirals"
[model]
family = "resnet"
width = 4
[train]
steps = 1
[certificate]
[sweep]
sample_size = [200]
"model.depth" = [4, 16, 64]
seed = {list(range(seeds))}
"certificate.prior" = ["brownian", "iid"]
""")
    out = []
    for c in expand(load_spec(spec)):
        L, s = c.model.depth, c.seed
        cert = 0.3 * (1 + 0.01 * s) * (ratio if L == 64 else 1.0)
        out.append(CellRecord(c.cell_id, "c", "done", c, {
            "certificate": cert, "holdout": cert + 0.05 + 0.01 * s, "gibbs_test": 0.1 + 0.01 * s,
            "test_draws": 2000, "kl": 5.0 * (1 + 0.02 * s), "gibbs_bound": 0.1, "scale": 0.03,
            "layer_kl_under_iid": 1.0, "seconds": 1.0}))
    return out


def test_certificate_claims_with_five_seeds_are_decided_by_tests(tmp_path):
    from resdyn.experiments.certificates import analyze

    good = {c.text: c for c in analyze(_cert_records(tmp_path, 5, 1.02)).claims}
    for c in good.values():
        check_claim(c)
    assert good["two_spirals: Brownian certificate at the largest depth <= 1.1 x its value at "
                "L = 16"].verdict == "held"
    assert good["every certificate lies above its Gibbs test error"].verdict == "held"
    bad = {c.text: c for c in analyze(_cert_records(tmp_path, 5, 1.3)).claims}
    for c in bad.values():
        check_claim(c)
    assert bad["two_spirals: Brownian certificate at the largest depth <= 1.1 x its value at "
               "L = 16"].verdict == "not held"


def test_mean_field_gd_claim_tests_across_seeds():
    from resdyn.experiments.meanfield import GDCheck, _gd_claim

    def run(ratio: float, lam: float, kl: float) -> GDCheck:
        return GDCheck(1024, [0], [1.0], [1.0], [1.0], [0.0], [0.0], [0.0], [0.0], [0.0], [0.0], 1.0, 1.0,
                       ratio, lam, kl, 1.0)

    wide = [run(100 * (1 + 0.1 * s), 0.8 + 0.01 * s, 0.02 + 0.005 * s) for s in range(5)]
    narrow = [run(2.0, 0.3, 0.5)] * 5
    c = _gd_claim({"1024": wide, "16": narrow})
    check_claim(c)
    assert c.verdict == "held"
    one = _gd_claim({"1024": wide[:1], "16": narrow[:1]})
    check_claim(one)
    assert one.verdict == "inconclusive" and "needs at least 2" in one.measured


def test_every_registered_reproduction_analyses_with_a_walked_module():
    """A reproduction added to the registry (the image experiments reuse these analyses) is covered
    by the walk above only if its analysis is one of those walked; a new one must be added there."""
    from resdyn.experiments import certificates, dead_zone, depth, dnl_convergence, meanfield, sample_size
    from resdyn.experiments.registry import REPRODUCTIONS

    walked = {sample_size.analyze, depth.analyze, dead_zone.analyze, meanfield.analyze,
              dnl_convergence.analyze, certificates.analyze}
    for r in REPRODUCTIONS.values():
        assert (r.analyze or r.run) in walked, f"{r.name}: its claims are not walked by this test"
