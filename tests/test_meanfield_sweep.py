"""The mean-field diagnostics recorded along training into the store by a plain sweep."""

import tomllib

import pytest
import torch

from resdyn.analysis.gram import gram_matrices, lambda_min
from resdyn.data import load, subsample
from resdyn.experiments.registry import spec_path
from resdyn.models.base import init_params
from resdyn.models.registry import build_model
from resdyn.sweeps import Store, parse_spec, run_sweep


def test_shipped_diagnostics_spec_records_gram_and_kl_series(tmp_path):
    raw = tomllib.loads(spec_path("mean-field-diagnostics").read_text())
    raw["train"]["steps"] = 40
    raw["sweep"] = {"sample_size": [32, 64], "seed": [0]}
    raw["trackers"] = {"gram": {"every": 20}, "kl": {"every": 20}}
    store = tmp_path / "mf.sqlite"
    assert run_sweep(parse_spec(raw), store).trained == 2
    with Store(store, create=False) as st:
        rows = st.rows()
        series = st.series()
    assert len(rows) == 2
    for row in rows:
        mine = [s for s in series if s[0] == row["cell_id"]]
        steps = {name: [s[2] for s in mine if s[1] == name] for name in
                 ("gram.lambda_min_G1", "gram.lambda_min_G2", "kl.kl_enc_knn", "kl.kl_pred_gauss")}
        assert all(v == [0, 20, 40] for v in steps.values()), steps
        kl = {s[2]: s[3] for s in mine if s[1] == "kl.kl_enc_knn"}
        # Particles start as N(0, I) draws (KL near 0) and move away while training.
        assert abs(kl[0]) < 0.2 and kl[40] > kl[0] + 0.1
        # At step 0 the recorded lambda_min(G2) is that of the initial network on the cell's own
        # sample, recomputed here from its seed without the sweep.
        cfg = row["config"]
        model = build_model(**cfg["model"])
        data = load(cfg["data"]["name"])
        idx = subsample(data, cfg["sample_size"], cfg["seed"])
        x = data.prepare(data.x[idx], torch.float64, "cpu")
        G = gram_matrices(model, init_params(model, [cfg["seed"]], torch.float64), x)
        g2 = {s[2]: s[3] for s in mine if s[1] == "gram.lambda_min_G2"}
        assert g2[0] == pytest.approx(float(lambda_min(G["G2"])), rel=1e-9, abs=1e-18)
