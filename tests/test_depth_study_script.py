"""scripts/depth_certificates.py's recipes: under the continued recipe a deeper rung's prior mean
starts from the shallower one, deepened; recipe 4 anneals the prior mean's rate; the claims of a
sequential recipe are tested at 6 alpha / (pi^2 k^2)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "depth_certificates.py"


@pytest.fixture()
def study(monkeypatch):
    spec = importlib.util.spec_from_file_location("depth_certificates", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # A small plan: 200 two-spirals points, width 4, 30 prior-mean steps, 20 posterior steps.
    monkeypatch.setattr(mod, "PLANS", {"two_spirals": (200, 4, 30, 16)})
    monkeypatch.setattr(mod, "POSTERIOR_STEPS", 20)
    monkeypatch.setattr(mod, "ROUNDS", 1)
    monkeypatch.setattr(mod, "TEST_ROUNDS", 1)
    return mod


def test_a_continued_rung_starts_from_the_deepened_shallower_prior_mean(study, monkeypatch, tmp_path):
    monkeypatch.setattr(study, "CONTINUED", {3: (0, 1e-2)})  # no refinement: the start is the mean
    rows4, mean4 = study.cell("two_spirals", 0, 4, False, ("brownian",), 3)
    assert rows4[0]["continued_from"] is None and rows4[0]["attempts"] == 15
    saved = tmp_path / "L4.pt"
    torch.save(mean4, saved)
    rows16, mean16 = study.cell("two_spirals", 0, 16, False, ("brownian",), 3, saved)
    assert rows16[0]["continued_from"] == 4 and rows16[0]["L"] == 16
    model4 = study.ResNet(in_dim=2, out_dim=2, width=4, depth=4, activation="tanh")
    _, expected = model4.deepened(mean4, 16)
    for k in expected:
        assert torch.equal(mean16[k], expected[k]), k
    # The rung's prior-mean rate is CONTINUED's, the shallowest rung's PRIOR_LR.
    rates = []
    real = study.certify_sample

    def spy(model, start, base, idx, seed, lr, *rest):
        rates.append(lr)
        return real(model, start, base, idx, seed, lr, *rest)

    monkeypatch.setattr(study, "CONTINUED", {3: (0, 3e-3)})
    monkeypatch.setattr(study, "certify_sample", spy)
    study.cell("two_spirals", 0, 16, False, ("brownian",), 3, saved)
    study.cell("two_spirals", 0, 4, False, ("brownian",), 3)
    assert rates == [3e-3, study.PRIOR_LR]
    # A continued rung without the rung above it is refused, not trained from scratch.
    with pytest.raises(ValueError, match="pass its saved prior mean"):
        study.cell("two_spirals", 0, 16, False, ("brownian",), 3)
    # Recipe 2 at L = 16 trains its own prior mean from the initialisation: a different one.
    _, own = study.cell("two_spirals", 0, 16, False, ("brownian",), 2)
    assert not torch.equal(own["W"], mean16["W"])


def test_sequential_recipes_test_the_kth_look_at_its_share_of_alpha(study):
    assert study.level("two_spirals", 3) == pytest.approx(6 * 0.05 / (math.pi**2 * 16))
    assert study.level("two_spirals", 2) == pytest.approx(0.05 / 3)  # alpha / looks
    assert study.level("mnist", 3) == pytest.approx(6 * 0.05 / math.pi**2)  # a first look
    assert study.level("two_spirals", 4) == pytest.approx(6 * 0.05 / (math.pi**2 * 25))  # the fifth
    # The k-th recipe's certificates pay delta / attempts, within the sequential share 6 / (pi^2 k^2).
    for k in (2, 3, 4):
        assert 1 / study.RECIPES[k]["attempts"] <= 6 / (math.pi**2 * k**2)


def test_recipe_4_anneals_the_prior_means_rate_and_recipe_2_does_not(study, monkeypatch):
    configs = []
    real = study.certify_sample

    def spy(model, start, base, idx, seed, lr, prior_config, cfg):
        configs.append((lr, prior_config, cfg.attempts))
        return real(model, start, base, idx, seed, lr, prior_config, cfg)

    monkeypatch.setattr(study, "certify_sample", spy)
    rows4, mean4 = study.cell("two_spirals", 0, 16, False, ("brownian",), 4)
    rows2, mean2 = study.cell("two_spirals", 0, 16, False, ("brownian",), 2)
    assert rows2[0]["recipe"] == 2
    (lr4, c4, a4), (lr2, c2, a2) = configs
    assert (lr4, c4.lr_schedule, c4.steps, a4) == (study.PRIOR_LR, "cosine", 30, 27)
    assert (lr2, c2.lr_schedule, c2.steps, a2) == (study.PRIOR_LR, "constant", 30, 7)
    # The rate at the last prior-mean step is annealed to nearly 0 under recipe 4 only.
    assert c4.lr_factor(29) < 0.01 and c2.lr_factor(29) == 1.0
    # Same initialisation and data, another schedule: another prior mean, and the rows say which recipe.
    assert not torch.equal(mean4["W"], mean2["W"])
    assert rows4[0]["recipe"] == 4 and rows4[0]["attempts"] == 27


def test_a_rows_kl_in_depth_adds_up_and_is_read_at_the_coarser_layer_times(study):
    rows, _ = study.cell("two_spirals", 0, 16, False, ("brownian", "iid"), 2)
    for r in rows:
        split = r["kl_in_depth"]
        assert math.isclose(split["io"] + split["layers"], r["kl"], rel_tol=1e-6)
        assert 0 < split["start"] < split["layers"]
        assert "coarse_4" in split and "coarse_16" not in split  # only coarser depths are read
    brownian = rows[0]["kl_in_depth"]
    # Brownian: the finer layers can only add (Cauchy-Schwarz per block); the i.i.d. reading of the
    # same deviation: the row's layer KL under the i.i.d. prior.
    assert brownian["coarse_4"] <= brownian["layers"] * (1 + 1e-9)
    assert math.isclose(brownian["iid_layers"], rows[0]["layer_kl_under_iid"], rel_tol=1e-5)


def _split_row(seed: int, L: int, layers: float, coarse16: float) -> dict:
    return {"data": "two_spirals", "prior": "brownian", "seed": seed, "L": L, "recipe": 2,
            "kl_in_depth": {"kl": layers + 0.1, "io": 0.1, "layers": layers, "coarse_4": coarse16 * 0.99,
                            **({"coarse_16": coarse16} if L > 16 else {}), "iid_layers": 16 * layers}}


def test_the_split_claim_holds_on_smooth_posteriors_and_fails_on_rough_ones(study, capsys):
    smooth = [_split_row(s, 256, 0.5 + 0.1 * s, (0.5 + 0.1 * s) / (1.0004 + 0.0001 * s)) for s in range(3)]
    study.split_report(smooth + [_split_row(s, 16, 0.4, 0.0) for s in range(3)])
    out = capsys.readouterr().out
    assert ("| two_spirals | 256 | layer KL <= 1.1 x its reading at L = 16 | 1.0004, 1.0005, 1.0006 "
            "| **held**") in out
    rough = [_split_row(s, 256, 1.0, 1.0 / (1.5 + 0.05 * s)) for s in range(3)]
    study.split_report(rough)
    assert "**not held**" in capsys.readouterr().out
    study.split_report([{**r, "prior": "iid"} for r in rough])  # only Brownian rows are read
    assert capsys.readouterr().out == ""


def test_attach_copies_the_split_only_onto_rows_the_rerun_reproduced(study, tmp_path):
    import json

    def row(seed: int, cert: float) -> dict:
        return {"data": "two_spirals", "seed": seed, "L": 16, "prior": "brownian", "recipe": 2,
                "certificate": cert, "kl": 0.1, "gibbs_bound": 0.01, "scale": 0.03}

    out, rerun = tmp_path / "out.jsonl", tmp_path / "rerun.jsonl"
    out.write_text(json.dumps(row(0, 0.02)) + "\n" + json.dumps(row(1, 0.03)) + "\n"
                   + json.dumps({**row(0, 0.02), "recipe": 3}) + "\n")
    rerun.write_text(json.dumps({**row(0, 0.02), "kl_in_depth": {"kl": 0.1}}) + "\n")
    assert study.attach_split(out, rerun) == 1
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert got[0]["kl_in_depth"] == {"kl": 0.1}
    assert "kl_in_depth" not in got[1] and "kl_in_depth" not in got[2]  # other seed; other recipe
    before = out.read_text()
    rerun.write_text(json.dumps({**row(1, 0.031), "kl_in_depth": {}}) + "\n")
    with pytest.raises(SystemExit, match="did not reproduce certificate"):
        study.attach_split(out, rerun)
    rerun.write_text(json.dumps({**row(2, 0.02), "kl_in_depth": {}}) + "\n")  # seed 2 is not in out
    with pytest.raises(SystemExit, match="with no row in"):
        study.attach_split(out, rerun)
    rerun.write_text(2 * (json.dumps({**row(1, 0.03), "kl_in_depth": {}}) + "\n"))
    with pytest.raises(SystemExit, match="twice"):
        study.attach_split(out, rerun)
    assert out.read_text() == before  # nothing written by a refused attach


def _ratio_rows(name: str, recipe: int, kl_logs: list[float], cert_logs: list[float]) -> list[dict]:
    """Brownian rows at L = 16 and 256 whose log ratios (256 over 16) are the given ones; a cell
    takes 36 s at L = 16 and 324 s at L = 256."""
    rows = []
    for seed, (a, b) in enumerate(zip(kl_logs, cert_logs, strict=True)):
        for L, kl, cert, sec in ((16, 0.2, 0.02, 36.0), (256, 0.2 * math.exp(a), 0.02 * math.exp(b), 324.0)):
            rows.append({"data": name, "seed": seed, "L": L, "prior": "brownian", "recipe": recipe,
                         "kl": kl, "certificate": cert, "seconds": sec})
    return rows


def test_power_plan_prints_the_seeds_an_inconclusive_ratio_claim_needs(study, capsys):
    from resdyn.analysis.verdicts import units_for_power

    # Two spirals under recipe 4 (its fifth look): the KL's log ratios 0.1, 0.3, 0.5 (mean 0.3,
    # SD 0.2) leave "at most 1.5" inconclusive with 3 seeds; the certificate's (tight, far below
    # log 1.1) hold, and are not planned for.
    rows = _ratio_rows("two_spirals", 4, [0.1, 0.3, 0.5], [0.0, 0.001, -0.001])
    sixth = 6 * 0.05 / (math.pi**2 * 36)
    assert study.next_level(rows, "two_spirals") == pytest.approx(sixth)
    study.power_plan(rows)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| 4 ")]
    assert len(lines) == 1 and "kl(L=256) <= 1.5" in lines[0]
    d = (math.log(1.5) - 0.3) / 0.2
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    assert cells[3:8] == ["3", "0.300", "0.200", f"{d:.3f}", f"{sixth:.2g}"]
    # d = 0.527 at level 0.00084: 41 seeds for even odds, 62 for power 0.8 (noncentral t).
    assert cells[8:10] == ["41", "62"]
    assert cells[8:10] == [str(units_for_power(d, sixth, 0.5)), str(units_for_power(d, sixth, 0.8))]
    assert cells[10] == "0.100"  # (36 + 324) s
    # A mean past the limit: no number of seeds decides the claim in its favour.
    study.power_plan(_ratio_rows("two_spirals", 4, [0.9, 1.2, 0.3], [0.0, 0.001, -0.001]))
    assert "none: the mean is past the limit" in capsys.readouterr().out
    # A claim another recipe decided is not planned for: recipe 2's KL ratios held (8 seeds).
    held = _ratio_rows("two_spirals", 2, [0.01, -0.02, 0.0, 0.02, -0.01, 0.01, 0.0, -0.01], [0.0] * 8)
    study.power_plan(rows + held)
    assert [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")][2:] == []
    # A data set whose only rows are recipe 2's (its second look there): the next look is the third.
    assert study.next_level(_ratio_rows("digits", 2, [0.1], [0.0]), "digits") == pytest.approx(
        6 * 0.05 / (math.pi**2 * 9))


def test_a_run_must_name_its_recipe(study, monkeypatch, capsys, tmp_path):
    out = str(tmp_path / "rows.jsonl")
    monkeypatch.setattr("sys.argv", ["depth_certificates.py", out, "--seeds", "0"])
    with pytest.raises(SystemExit) as stop:
        study._arguments()
    assert stop.value.code == 2 and "a run names its recipe" in capsys.readouterr().err
    for reading in (["--report"], ["--power"], ["--attach", out]):
        monkeypatch.setattr("sys.argv", ["depth_certificates.py", out, *reading])
        assert study._arguments().recipe == max(study.RECIPES)  # reading defaults to the latest
    monkeypatch.setattr("sys.argv", ["depth_certificates.py", out, "--recipe", "2"])
    assert study._arguments().recipe == 2
