"""The mean-field diagnostics recorded along training into the store by a plain sweep."""

import json
import signal
import subprocess
import sys
import time
import tomllib

import pytest
import torch

from helpers import count_rows
from resdyn.analysis.gram import gram_matrices, lambda_min
from resdyn.data import load, subsample
from resdyn.experiments.meanfield import analyze
from resdyn.models.base import init_params
from resdyn.models.registry import build_model
from resdyn.sweeps import Store, parse_spec, run_sweep
from resdyn.sweeps.spec import spec_path


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


# -- the reproduction's spec: killed and resumed -------------------------------------------------

def _small_reproduction_spec(path):
    """mean-field-quick with fewer cells and steps, one cell per group, frequent checkpoints."""
    raw = tomllib.loads(spec_path("mean-field-quick").read_text())
    raw["name"] = "mean-field-quick"  # so that analyze() picks the rows up
    raw["data"]["pool_size"] = 64
    raw["data"]["test_size"] = 100
    raw["train"]["steps"] = 60
    raw["trackers"] = {"gram": {"every": 20, "max_points": 8}, "kl": {"every": 20}}
    raw["sweep"] = {"seed": [0, 1], "sample_size": [16, 32, 64]}
    raw["run"].update(group_size=1, checkpoint_seconds=0.05)
    lines = []
    for table in ("data", "model", "train", "run"):
        lines.append(f"[{table}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in raw[table].items()]
    for section in ("trackers", "measures"):
        for name, opts in raw[section].items():
            lines.append(f"[{section}.{name}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in opts.items()]
    lines.append("[sweep]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in raw["sweep"].items()]
    path.write_text(f'name = "{raw["name"]}"\n' + "\n".join(lines) + "\n")
    return path


def _everything(store):
    with Store(store, create=False) as st:
        rows = st.records(series=True)
    cells = {r.cell_id: (r.cell.config, r.metrics, r.measures, r.status, r.series) for r in rows}
    out = analyze(rows, None, "mean-field-quick")
    return cells, out.tables, [(c.text, c.measured, c.held) for c in out.claims], out.data["trajectories"]


def test_mean_field_reproduction_killed_and_resumed_equals_an_uninterrupted_run(tmp_path):
    spec = _small_reproduction_spec(tmp_path / "mf.toml")

    def cmd(store):
        return [sys.executable, "-m", "resdyn.cli", "run", str(spec), "--store", str(store), "--quiet",
                "--threads", "1"]

    ref, cut = tmp_path / "ref.sqlite", tmp_path / "cut.sqlite"
    subprocess.run(cmd(ref), check=True, capture_output=True)
    proc = subprocess.Popen(cmd(cut), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while count_rows(cut) < 1 and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into the next cell, past a checkpoint or two
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = count_rows(cut)
    assert 1 <= partial < 6
    subprocess.run(cmd(cut), check=True, capture_output=True)
    a, b = _everything(ref), _everything(cut)
    assert len(a[0]) == len(b[0]) == 6
    # Rows (metrics, measures, series) bitwise, and so the analysis: tables, claims, trajectories.
    assert a[0] == b[0]
    assert json.dumps(a[1:]) == json.dumps(b[1:])  # (NaN != NaN: the loss before step 0)
    assert len(a[1]["cells"]) == 6 and a[3]["step"] == [0, 20, 40, 60]


@pytest.mark.slow
def test_gradient_descent_check_as_a_spec_gives_the_numbers_of_the_direct_run(tmp_path):
    from resdyn.experiments.meanfield import gd_check_from_row, gradient_descent_check

    raw = tomllib.loads(spec_path("mean-field-gd").read_text())
    raw["train"]["steps"] = 200
    raw["trackers"]["linear_rate"]["every"] = 200
    raw["sweep"]["model"] = [{"width": 16, "predictor_width": 16}]
    raw["sweep"]["seed"] = [0]  # the direct run below is one seed
    store = tmp_path / "gd.sqlite"
    assert run_sweep(parse_spec(raw), store).trained == 1
    with Store(store, create=False) as st:
        (row,) = st.records(series=True)
    got = gd_check_from_row(row)
    ref = gradient_descent_check(width=16, steps=200, records=2)
    assert got.steps == ref.steps == [0, 100, 200]
    # Same data, sample, initial weights and engine run: the diagnostics agree bitwise.
    for f in ("lambda_min_g1", "lambda_min_g2", "kl_enc_knn", "kl_pred_knn", "kl_enc_gauss",
              "kl_pred_gauss", "w2_enc", "w2_pred", "linear_rate", "rate_bound", "lambda_ratio",
              "kl_last_quarter_fraction"):
        assert getattr(got, f) == getattr(ref, f), f
    # The loss: the engine's chunked mean against a direct mean of the same values.
    assert got.loss == pytest.approx(ref.loss, rel=1e-12)
    assert got.loss_ratio == pytest.approx(ref.loss_ratio, rel=1e-12)
