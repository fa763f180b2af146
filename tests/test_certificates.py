"""Certificates as an ordinary spec: the [certificate] table and its errors, typed cells and their
stored form, a tiny spec through `resdyn run` and `resdyn certify`, a NaN failing its cell only,
the shipped specs, `resdyn reproduce certificates`, and claims that can fail."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from click.testing import CliRunner

from certificate_specs import tiny as _tiny
from resdyn.cli.main import main
from resdyn.experiments import certificates
from resdyn.experiments.registry import get_reproduction
from resdyn.sweeps import Store, expand, load_spec
from resdyn.sweeps import runner as runner_mod
from resdyn.sweeps.cells import decode_cell
from resdyn.sweeps.records import CellRecord
from resdyn.sweeps.runner import train_group
from resdyn.sweeps.spec import SpecError, parse_spec, spec_path
from resdyn.training.certify import CertificateConfig, make_prior, recertify


def _raw(**certificate) -> dict:
    return {"name": "c", "data": {"name": "two_spirals"},
            "model": {"family": "resnet", "width": 4, "depth": 2}, "train": {"steps": 5},
            "certificate": certificate, "sweep": {"sample_size": [64]}}


@pytest.mark.parametrize("change, message", [
    ({"certificate": {"rounds": 0}}, r"spec key certificate\.rounds: must be an integer"),
    ({"certificate": {"prior": "flat"}}, r"spec key certificate\.prior: must be one of"),
    ({"certificate": {"bogus": 1}}, r"spec key certificate\.bogus: unknown key; allowed: prior"),
    ({"certificate": {"scales": [0.1, -1.0]}}, r"spec key certificate\.scales\[1\]: must be"),
    ({"certificate": {"delta": 0.5, "delta_mc": 0.5}}, r"spec key certificate: delta \+ delta_mc"),
    ({"sweep": {"sample_size": [64], "certificate.prior": ["brownian", "x"]}},
     r"spec key sweep\.certificate\.prior\[1\]: must be one of"),
    ({"sweep": {"sample_size": [64], "certificate.nope": [1]}},
     r"spec key sweep\.certificate\.nope\[0\]: unknown key"),
    ({"model": {"family": "resnet", "width": 4, "tied": True}}, r"spec key model\.tied: a certificate "
         r"of a resnet needs layers with their own weights \(model\.tied = False\)"),
        ({"model": {"family": "image_resnet", "tied": True}}, r"spec key model\.tied: a certificate "
         r"of a image_resnet needs layers with their own weights"),
    ({"model": {"family": "ode_resnet", "width": 4}}, r"spec key model\.family: a certificate"),
    ({"sweep": {"sample_size": [64], "model.block": ["two_layer", "one_layer"]}},
     r"spec key sweep\.model\.block\[1\]: a certificate .* model\.block is 'one_layer'"),
    ({"measures": {"test_error_bound": {}}}, r"spec key certificate: certificate cells record no"),
])
def test_the_certificate_table_is_checked_by_its_declarations_naming_the_key(change, message):
    raw = _raw()
    raw.update(change)
    with pytest.raises(SpecError, match=message):
        parse_spec(raw)


def test_sweeping_a_certificate_key_needs_the_table_and_specs_without_it_are_unchanged():
    raw = _raw()
    del raw["certificate"]
    assert parse_spec(raw).certificate is None
    raw["sweep"] = {"sample_size": [64], "certificate.prior": ["iid"]}
    with pytest.raises(SpecError, match=r"sweep\.certificate\.prior: sweeps a certificate setting, "
                       "but the spec has no \\[certificate\\] table"):
        parse_spec(raw)


def test_cells_carry_their_certificate_and_decode_to_the_same_id(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(_tiny())
    cells = expand(load_spec(path))
    assert len(cells) == 4 and {c.certificate.prior for c in cells} == {"brownian", "iid"}
    assert all(c.certificate.posterior_steps == 20 and c.certificate.scales == (0.1, 0.03) for c in cells)
    for c in cells:
        assert c.config["certificate"]["scales"] == [0.1, 0.03]
        back = decode_cell(c.config)
        assert back.certificate == c.certificate and back.cell_id == c.cell_id
    # The two priors are two cells and two groups; without [certificate] the config has no such
    # table at all (so every existing cell id is unchanged) and its id differs.
    assert len({c.cell_id for c in cells}) == 4 and len({c.group_key for c in cells}) == 4
    plain = dataclasses.replace(cells[0], certificate=None)
    assert "certificate" not in plain.config and plain.cell_id != cells[0].cell_id


def _metric_lines(output: str, section: str = "prior learned on S_p:") -> dict[str, tuple[str, str]]:
    """The (stored, new) columns of one section of `resdyn certify`'s table."""
    out: dict[str, tuple[str, str]] = {}
    lines = output.splitlines()
    start = lines.index(section) + 1
    ends = [i for i, ln in enumerate(lines) if i >= start and ln.endswith(":") and "  " not in ln]
    for line in lines[start:ends[0] if ends else None]:
        m = re.match(r"^(\S.*?)\s{2,}(\S*)\s+(\S+)$", line)
        if m:
            out[m.group(1).strip()] = (m.group(2), m.group(3))
    return out


def test_run_a_tiny_certificate_spec_then_certify_a_cell_with_fresh_draws(tmp_path):
    spec, store = tmp_path / "t.toml", tmp_path / "s.sqlite"
    spec.write_text(_tiny())
    res = CliRunner().invoke(main, ["run", str(spec), "--store", str(store), "--quiet"])
    assert res.exit_code == 0, res.output
    with Store(store, create=False) as st:
        records = st.records()
        assert len(records) == 4 and all(r.status == "done" for r in records)
        assert all(state == "ok" for _, state in st.verify())  # one sha256 covers m, u and weights
        rec = next(r for r in records if r.cell.model.depth == 4 and r.cell.certificate.prior == "brownian")
        mean = {k: v[None] for k, v in st.load_extras(rec, "prior_mean").items()}
        u = {k: v[None] for k, v in st.load_extras(rec, "posterior_u").items()}
    m = rec.metrics
    assert m["n"] == 100 and m["draws"] == 400 and m["diverged"] == 0.0
    assert 0 < m["gibbs_bound"] < m["sample_risk_bound"] < m["certificate"] < 1
    # The cell's weights are the posterior mean m + A u (not the prior mean).
    loaded = __import__("resdyn").load_cell(store, rec.cell_id)
    post = make_prior("brownian", mean, m["scale"], rec.cell.model.horizon).params(u)
    assert all(torch.equal(loaded.params[k], post[k]) for k in post)
    assert not torch.equal(loaded.params["W"], mean["W"]) and float(u["W"].abs().max()) > 0
    # The stored draws' stream gives the stored numbers back exactly: the reload is right.
    cell, data = rec.cell, rec.cell.data.load()
    sample = cell.data.indices(data, cell.sample_size, cell.seed)
    same = recertify(cell.model, mean, u, m["scale"], data, sample, cell.seed, cell.certificate,
                     stream="certificate/bound")
    assert (same.gibbs_bound, same.kl, same.certificate) == (m["gibbs_bound"], m["kl"], m["certificate"])
    # `resdyn certify`: fresh draws; split, scale and KL identical; within 4 printed errors.
    out = CliRunner().invoke(main, ["certify", str(store), rec.cell_id[:8]])
    assert out.exit_code == 0, out.output
    terms = _metric_lines(out.output)
    for term in ("bound examples n", "prior examples |S_p|", "prior scale s", "KL(Q || P)", "draws m",
                 "PAC-Bayes term"):
        assert terms[term][0] == terms[term][1], (term, terms[term])
    stored, new = (float(x) for x in terms["certificate"])
    se = float(terms["certificate standard error"][1])
    assert stored == pytest.approx(m["certificate"], rel=1e-5)
    assert 0 < se < 0.05 and abs(new - stored) <= 4 * se, out.output
    fresh = recertify(cell.model, mean, u, m["scale"], data, sample, cell.seed, cell.certificate,
                      stream="certificate/recheck")
    assert new == pytest.approx(fresh.certificate, rel=1e-5)
    assert float(terms["Gibbs error on S_b"][1]) == pytest.approx(fresh.gibbs_bound, rel=1e-5)
    assert se == pytest.approx(fresh.certificate_se, rel=1e-5) and fresh.stream != "certificate/bound"
    # The data-independent baseline's certificate is recomputed the same way from its stored u
    # around the initialisation (rebuilt from the cell's init seed).
    base = _metric_lines(out.output, "data-independent prior (the initialisation):")
    for term in ("bound examples n", "prior scale s", "KL(Q || P)", "draws m", "PAC-Bayes term"):
        assert base[term][0] == base[term][1], (term, base[term])
    b_stored, b_new = (float(x) for x in base["certificate"])
    assert b_stored == pytest.approx(m["baseline_certificate"], rel=1e-5) and b_stored != stored
    assert abs(b_new - b_stored) <= 4 * float(base["certificate standard error"][1]), out.output
    # More rounds: the Gibbs estimate is compared, the certificate is not (it tightens with m).
    more = CliRunner().invoke(main, ["certify", str(store), rec.cell_id, "--rounds", "8"])
    assert more.exit_code == 0 and "compare the Gibbs error" in more.output
    assert _metric_lines(more.output)["draws m"] == ("400", "800")
    # An unknown id, and a cell that is not a certificate cell, are refused.
    bad = CliRunner().invoke(main, ["certify", str(store), "zzzzzzzz"])
    assert bad.exit_code != 0 and "no cell" in bad.output
    plain = tmp_path / "plain.toml"
    plain.write_text(_tiny(name="plain", depths="[2]", priors='["iid"]').split("[certificate]")[0]
                     + '[sweep]\nsample_size = [64]\n')
    assert CliRunner().invoke(main, ["run", str(plain), "--store", str(store), "--quiet"]).exit_code == 0
    with Store(store, create=False) as st:
        (other,) = [r for r in st.records() if r.cell.certificate is None]
    bad = CliRunner().invoke(main, ["certify", str(store), other.cell_id])
    assert bad.exit_code == 1 and "is not a certificate cell" in bad.output


def test_a_nan_fails_its_cell_not_its_group(tmp_path, monkeypatch):
    path = tmp_path / "t.toml"
    path.write_text(_tiny(depths="[2]", seeds="[0, 1, 2]", priors='["brownian"]'))
    cells = expand(load_spec(path))
    assert len({c.group_key for c in cells}) == 1
    real = runner_mod.certify_sample

    def flaky(model, params0, data, sample, seed, *args):
        out = real(model, params0, data, sample, seed, *args)
        if seed == 1:  # the posterior's objective went non-finite
            hist = out.posterior_history.clone()
            hist[-1] = float("nan")
            return dataclasses.replace(out, posterior_history=hist)
        if seed == 2:
            raise ValueError("kl_inv: q must lie in [0, 1]")
        return out

    monkeypatch.setattr(runner_mod, "certify_sample", flaky)
    results = train_group(cells)
    assert [r.diverged for r in results] == [False, True, True]
    assert math.isfinite(results[1].metrics["certificate"]) and results[1].weights
    assert not results[2].weights and "kl_inv" in results[2].provenance["certificate_error"]
    with Store(tmp_path / "s.sqlite") as st:
        for r in results:
            st.write("t", r)
        assert sorted(r.status for r in st.records()) == ["diverged", "diverged", "done"]


def test_the_shipped_specs_are_ordinary_specs_with_the_study_settings():
    full = expand(load_spec(spec_path("certificates")))
    quick = expand(load_spec(spec_path("certificates-quick")))
    assert len(full) == 3 * 4 * 3 * 2 and len(quick) == 2 * 2 * 2 * 2
    plans = {(c.data.name, c.sample_size, c.model.width, c.training.config.steps,
              c.training.config.batch_size, c.lr) for c in full}
    assert plans == {("two_spirals", 4000, 16, 2000, 128, 1e-2), ("digits", 1200, 32, 1500, 128, 1e-2),
                     ("mnist-5k", 4000, 32, 1500, 128, 1e-2)}
    assert {c.model.depth for c in full} == {4, 16, 64, 256} and {c.seed for c in full} == {0, 1, 2}
    assert {c.model.depth for c in quick} == {4, 16} and {c.seed for c in quick} == {0, 1}
    want = CertificateConfig(scales=(0.1, 0.03, 0.01), posterior_steps=1000, p_min=1e-2)
    assert {dataclasses.replace(c.certificate, prior="brownian") for c in full} == {want}
    assert {c.certificate.prior for c in full} == {"brownian", "iid"}
    assert all(c.model.family == "resnet" and c.model.block == "two_layer" and not c.model.tied
               and c.model.activation == "tanh" for c in full + quick)
    repro = get_reproduction("certificates")
    assert repro.specs == ("certificates",) and repro.analyze is certificates.analyze and repro.run is None


def test_reproduce_certificates_runs_the_spec_into_the_store_and_analyses_it(tmp_path, monkeypatch):
    import resdyn.cli.reproduce as reproduce

    tiny = tmp_path / "certificates-quick.toml"
    tiny.write_text(_tiny(name="certificates-quick", depths="[2, 16]", seeds="[0, 1]"))
    monkeypatch.setattr(reproduce, "spec_path", lambda name: tiny)
    store = tmp_path / "r.sqlite"
    res = CliRunner().invoke(main, ["reproduce", "certificates", "--quick", "--store", str(store),
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    assert "two_spirals: Brownian certificate at the largest depth <= 1.1 x" in res.output
    assert "every certificate lies above its Gibbs test error" in res.output
    with Store(store, create=False) as st:
        assert len(st.records()) == 8
        out = certificates.analyze(st.records())
    # The four terms of certificate - hold-out bound, recomputed from each real cell's stored
    # numbers, add up to it: one row per depth, Brownian prior, two seeds.
    terms = out.tables["certificate minus hold-out bound, term by term (Brownian prior, seed means)"]
    assert [(t["L"], t["seeds"]) for t in terms] == [("2", 2), ("16", 2)]
    for t in terms:
        parts = t["noise (Gibbs error - prior mean's)"] + t["Monte-Carlo"] + t["ln(2 sqrt(n))"] + t["KL"]
        assert parts == pytest.approx(t["certificate - hold-out"], abs=1e-9)
        assert t["Monte-Carlo"] > 0 and t["ln(2 sqrt(n))"] > 0


def _records(tmp_path, metrics) -> list[CellRecord]:
    """Records of a tiny certificate grid (depths 4, 16, 64; seeds 0-3; both priors) whose metrics
    are ``metrics(L, seed, prior)``."""
    path = tmp_path / "g.toml"
    path.write_text(_tiny(depths="[4, 16, 64]", seeds="[0, 1, 2, 3]"))
    return [CellRecord(c.cell_id, "g", "done", c, {"test_draws": 2000, **metrics(c.model.depth, c.seed,
                                                                                 c.certificate.prior)})
            for c in expand(load_spec(path))]


def _good(L, seed, prior):
    wobble = (0.01, -0.01, 0.02, 0.0)[seed]
    cert = 0.20 * (1 + 0.02 * (L / 64) + wobble)
    return {"certificate": cert, "holdout": cert + 0.05 + wobble, "gibbs_test": 0.08 + 0.005 * seed,
            "gibbs_bound": 0.07, "kl": 10.0 * (1 + 0.1 * (L / 64) + wobble), "scale": 0.03,
            "layer_kl_under_iid": 5.0, "seconds": 1.0}


def test_the_claims_hold_on_good_numbers_and_fail_on_bad_ones(tmp_path):
    out = certificates.analyze(_records(tmp_path, _good), tmp_path / "figs")
    verdicts = {c.text: c.verdict for c in out.claims}
    assert len(verdicts) == 6 and set(verdicts.values()) == {"held"}, verdicts
    assert len(out.tables["certificates"]) == 24 and len(out.figures) == 2
    assert all(p.is_file() for p in out.figures.values())
    margin = out.claims[-1].values["smallest_margin"]
    assert margin == pytest.approx(min(certificates.margin(r) for r in out.tables["certificates"]))

    def bad(L, seed, prior):
        r = _good(L, seed, prior)
        r["certificate"] *= 2.0 if L == 64 else 1.0  # twice as large at the largest depth
        r["kl"] *= 3.0 if L == 64 else 1.0
        r["holdout"] = r["certificate"] - 0.03 - 0.01 * seed  # the hold-out bound is tighter
        r["gibbs_test"] = r["certificate"] + 0.02 + 0.005 * seed if L == 4 else r["gibbs_test"]
        return r

    got = {c.text: c.verdict for c in certificates.analyze(_records(tmp_path, bad)).claims}
    assert set(got.values()) == {"not held"}, got
    # One seed: nothing is tested across seeds. Depths up to 16 only: no depth claim can be made.
    one = [r for r in _records(tmp_path, _good) if r.cell.seed == 0]
    assert {c.verdict for c in certificates.analyze(one).claims} == {"inconclusive"}
    short = [r for r in _records(tmp_path, _good) if r.cell.model.depth <= 16]
    first = certificates.analyze(short).claims[0]
    assert first.verdict == "inconclusive" and "needs L = 16 and a larger depth" in first.measured


def test_split_claim_holds_on_smooth_posteriors_fails_on_rough_ones_and_skips_unmoved_layers():
    smooth = [{"layers": r * x, "coarse_16": x} for r, x in ((1.0004, 0.3), (1.0006, 0.5), (1.0005, 0.7))]
    ratios, v = certificates.split_claim([*smooth, {"layers": 0.0, "coarse_16": 0.0}])
    assert ratios == pytest.approx([1.0004, 1.0006, 1.0005]) and v.n == 3 and v.verdict == "held"
    rough = [{"layers": r * 0.5, "coarse_16": 0.5} for r in (1.4, 1.6, 1.5, 1.7)]
    assert certificates.split_claim(rough)[1].verdict == "not held"
    assert certificates.split_claim(rough, alpha=1e-9)[1].verdict == "inconclusive"
