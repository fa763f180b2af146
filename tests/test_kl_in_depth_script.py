"""scripts/kl_in_depth.py: the KL split read from a certificates store's stored weights."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from certificate_specs import tiny
from resdyn.cli.main import main

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
    for r in rows:
        assert math.isclose(r["kl"], r["kl_stored"], rel_tol=1e-5)
        assert math.isclose(r["io"] + r["layers"], r["kl"], rel_tol=1e-6)  # float32 sums
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
