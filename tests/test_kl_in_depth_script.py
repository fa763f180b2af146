"""scripts/kl_in_depth.py: the KL split read from a certificates store's stored weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

from certificate_specs import tiny
from resdyn.api import certificate_weights
from resdyn.cli.main import main
from resdyn.sweeps.store import Store
from resdyn.training.certify import make_prior

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "kl_in_depth.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("kl_in_depth", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("kl-split")
    spec = tiny(name="kl-split", depths="[4, 32]", seeds="[0, 1, 2]", priors='["brownian"]')
    (d / "s.toml").write_text(spec)
    res = CliRunner().invoke(main, ["run", str(d / "s.toml"), "--store", str(d / "s.sqlite"), "--quiet"])
    assert res.exit_code == 0, res.output
    return d / "s.sqlite"


def test_the_split_of_stored_cells_adds_up_to_their_stored_kl(script, store):
    rows = script.split_rows(store)
    assert sorted((r["seed"], r["L"]) for r in rows) == [(0, 32), (1, 32), (2, 32)]  # L < 16 left out
    with Store(store, create=False, readonly=True) as st:
        records = {rec.cell_id: rec for rec in st.records()}
        weights = {r["cell_id"]: certificate_weights(st, records[r["cell_id"]]) for r in rows}
        horizon = {r["cell_id"]: records[r["cell_id"]].cell.model.horizon for r in rows}
    for r in rows:
        # The split by hand from the stored whitened posterior mean u: KL = |u|^2 / 2, the layers'
        # part over W, b, V and the rest (embedding, readout) in io; and the same layer deviation
        # under the i.i.d. prior of scale s, |theta_layers - m_layers|^2 / (2 s^2).
        mean, u, _ = weights[r["cell_id"]]
        half = {k: 0.5 * float(v.double().square().sum()) for k, v in u.items()}
        layers = ("W", "b", "V")
        assert r["layers"] == pytest.approx(sum(half[k] for k in layers), rel=1e-6)
        assert r["io"] == pytest.approx(sum(v for k, v in half.items() if k not in layers), rel=1e-6)
        post = make_prior("brownian", mean, r["scale"], horizon[r["cell_id"]], layers).params(u)
        iid = sum(float((post[k] - mean[k]).double().square().sum()) for k in layers) / (2 * r["scale"] ** 2)
        assert r["iid_layers"] == pytest.approx(iid, rel=1e-4)  # float32 differences of the path
        # Brownian: reading the path at fewer layer times can only lower its cost, and at L = 4
        # lower than at L = 16 (the L = 4 times are among the L = 16 ones).
        assert r["coarse_4"] <= r["coarse_16"] * (1 + 1e-5) <= r["layers"] * (1 + 2e-5)  # float32
        assert r["iid_layers"] > r["iid_coarse_16"] > r["iid_coarse_4"] > 0
    lines = script.report(rows)
    assert len(lines) == 2 + 3 + 3 + 1
    assert lines[-1].startswith("| two_spirals | 32 | layer KL <= 1.1 x its reading at L = 16 |")


def test_the_claim_fails_on_a_rough_posterior(script):
    rough = [{"data": "x", "S": 1, "seed": s, "L": 64, "scale": 0.1, "kl": 2.0, "io": 0.5, "layers": 1.5,
              "start": 0.1, "coarse_4": 0.2, "coarse_16": 0.5 + 0.01 * s, "iid_layers": 9.0,
              "iid_coarse_16": 2.0}
             for s in range(4)]
    assert "**not held**" in script.report(rough)[-1]
    smooth = [{**r, "coarse_16": 1.5 / (1.001 + 0.001 * r["seed"])} for r in rough]
    assert "**held**" in script.report(smooth)[-1]
