"""Specs, grids, the store, executors: the data-flow guarantees of a sweep."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from helpers import SPEC_TOML, count_rows
from resdyn.cli.main import main
from resdyn.models.io import load_params
from resdyn.sweeps import SpecError, Store, expand, group_cells, parse_spec, run_sweep
from resdyn.sweeps.runner import WarmStart, train_group

BASE = {
    "name": "t",
    "data": {"name": "two_spirals"},
    "model": {"family": "resnet", "width": 6, "depth": 3},
    "train": {"steps": 40, "lr": 1e-2},
    "sweep": {"sample_size": [32, 64], "seed": [0, 1]},
}


def spec_of(**over):
    raw = json.loads(json.dumps(BASE))
    for k, v in over.items():
        raw[k] = v
    return parse_spec(raw)


def write_spec(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path




def _metrics(store_path):
    with Store(store_path, create=False) as st:
        return {r["cell_id"]: (r["metrics"], r["measures"], r["status"]) for r in st.rows()}


def _weights(store_path, cell_id):
    with Store(store_path, create=False) as st:
        return load_params(st.weights_path(cell_id))[1]


# -- specs ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"bogus": 1}, r"spec key bogus: unknown top-level key; allowed: name, description"),
        ({"data": {"name": "imagenet"}}, r"spec key data.name: unknown data set 'imagenet'; allowed:"),
        ({"model": {"family": "transformer"}}, r"spec key model.family: unknown family 'transformer'"),
        ({"model": {"family": "resnet", "depht": 3}}, r"spec key model.depht: unknown option"),
        ({"train": {"steps": 10, "lr": -1.0}}, r"spec key train.lr: must be a number > 0"),
        ({"train": {"stepz": 10}}, r"spec key train.stepz: unknown key; allowed: steps"),
        ({"sweep": {"seed": [0]}}, r"spec key sweep.sample_size: missing"),
        ({"sweep": {"sample_size": [32, "64"]}}, r"spec key sweep.sample_size\[1\]: must be an integer"),
        ({"sweep": {"sample_size": [32], "colour": [1]}}, r"spec key sweep.colour: is not a model"),
        ({"run": {"dtype": "float16"}}, r"spec key run.dtype: must be 'float32' or 'float64'"),
        ({"measures": {"no_such_bound": {}}}, r"spec key measures.no_such_bound: unknown measure"),
    ],
)
def test_malformed_specs_name_the_key_path(over, match):
    with pytest.raises(SpecError, match=match):
        spec_of(**over)


@pytest.mark.parametrize(
    ("over", "match"),
    [
        # Particle diagnostics need the mean-field family.
        ({"trackers": {"kl": {"every": 10}}},
         r"^spec key trackers.kl: does not apply to the model: needs model family 'meanfield', "
         r"got 'resnet'$"),
        # The Gram tracker needs one output; out_dim left to the data set is the class count (2).
        ({"trackers": {"gram": {"every": 10}}},
         r"^spec key trackers.gram: does not apply to the model: needs a scalar-output model"),
        # A swept variant is checked too, and named.
        ({"model": {"family": "meanfield", "depth": 2, "width": 4, "predictor_width": 4},
          "measures": {"meanfield_kl_plugin": {}},
          "sweep": {"sample_size": [32], "activation": ["tanh", "relu"]}},
         r"^spec key measures.meanfield_kl_plugin: does not apply to the model of "
         r"sweep.activation\[1\]: needs activation 'tanh', got 'relu'$"),
        ({"model": {"family": "meanfield", "depth": 2, "width": 4, "predictor_width": 4},
          "measures": {"test_error_bound": {}}},
         r"^spec key measures.test_error_bound: does not apply to the model: needs model family"),
    ],
)
def test_a_measure_that_does_not_apply_fails_at_parse_time(over, match):
    with pytest.raises(SpecError, match=match) as err:
        spec_of(**over)
    assert "\n" not in str(err.value)


def test_measures_that_apply_pass_and_an_inapplicable_one_creates_no_store(tmp_path):
    ok = {"model": {"family": "meanfield", "depth": 2, "width": 4, "predictor_width": 4},
          "trackers": {"gram": {"every": 10}, "kl": {"every": 10}},
          "measures": {"meanfield_kl_plugin": {}, "displacement": {}}}
    assert set(spec_of(**ok).trackers) == {"gram", "kl"}
    assert set(spec_of(**{**ok, "model": {"family": "resnet", "width": 4, "depth": 2, "out_dim": 1},
                          "trackers": {"gram": {"every": 10}}, "measures": {}}).trackers) == {"gram"}
    spec = write_spec(tmp_path / "bad.toml", """
        name = "bad"
        [data]
        name = "two_spirals"
        [model]
        family = "resnet"
        width = 4
        depth = 2
        [train]
        steps = 5
        [trackers.kl]
        every = 1
        [sweep]
        sample_size = [16]
    """)
    store = tmp_path / "never.sqlite"
    res = CliRunner().invoke(main, ["run", str(spec), "--store", str(store), "--quiet"])
    assert res.exit_code != 0
    assert "spec key trackers.kl: does not apply to the model" in res.output
    assert not store.exists() and not Path(str(store) + ".d").exists()


def test_impossible_values_are_caught_at_expansion_with_their_sweep_point():
    spec = spec_of(sweep={"sample_size": [32], "depth": [2, -1]})
    match = r"spec key model \(sample_size=32, depth=-1, seed=0\): depth must be"
    with pytest.raises(SpecError, match=match):
        expand(spec)
    with pytest.raises(SpecError, match=r"S=100000 exceeds the training pool"):
        expand(spec_of(sweep={"sample_size": [100000]}))


def test_grid_ids_are_stable_and_groups_deterministic():
    spec = spec_of(sweep={"sample_size": [32, 64], "seed": [0, 1], "lr": [1e-2, 3e-3],
                          "activation": ["tanh", "relu"]})
    cells = expand(spec)
    assert len(cells) == 16
    assert [c.cell_id for c in cells] == [c.cell_id for c in expand(spec)]
    groups = group_cells(cells, group_size=3)
    # Activation changes the computation: two group keys, each of 8 cells in slices of 3.
    assert sorted(len(g) for g in groups) == [2, 2, 3, 3, 3, 3]
    assert all(len({c.group_key for c in g}) == 1 for g in groups)
    assert [[c.cell_id for c in g] for g in groups] == \
        [[c.cell_id for c in g] for g in group_cells(list(cells), 3)]


def test_cell_numbers_do_not_depend_on_the_group():
    spec = spec_of(sweep={"sample_size": [16, 32, 48, 64, 80, 96, 112, 128],
                          "seed": [0, 1, 2, 3], "lr": [1e-2]})
    cells = expand(spec)
    assert len(cells) == 32
    target = cells[13]
    alone = train_group([target])[0]
    pair = train_group([cells[2], target])[1]
    full = train_group(cells)[13]
    for other in (pair, full):
        assert other.cell_id == target.cell_id
        assert other.metrics == alone.metrics
        assert all(torch.equal(other.weights[k], alone.weights[k]) for k in alone.weights)


# -- the store and the CLI ----------------------------------------------------------------------

def test_run_results_status_and_rerun_trains_nothing(tmp_path):
    spec = write_spec(tmp_path / "s.toml", SPEC_TOML.format(steps=30, group_size=4, ckpt=120))
    store = tmp_path / "out" / "s.sqlite"
    runner = CliRunner()
    res = runner.invoke(main, ["run", str(spec), "--store", str(store), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "9 cells; 0 already in the store, 9 trained now" in res.output
    again = runner.invoke(main, ["run", str(spec), "--store", str(store), "--quiet"])
    assert "9 already in the store, 0 trained now" in again.output
    csv_out = runner.invoke(main, ["results", str(store)])
    lines = csv_out.output.strip().splitlines()
    assert len(lines) == 10 and "test_acc" in lines[0] and "sample_size" in lines[0]
    js = json.loads(runner.invoke(main, ["results", str(store), "--format", "json"]).output)
    assert sorted({r["sample_size"] for r in js}) == [32, 64, 128]
    st = runner.invoke(main, ["status", str(store), "--spec", str(spec)])
    assert "9 of 9 cells done, 0 missing" in st.output
    # A store with S = 64 and 128 only: the S = 32 cells are the missing ones, whatever their order.
    part = write_spec(tmp_path / "p.toml", spec.read_text().replace("sample_size = [32, 64, 128]",
                                                                    "sample_size = [64, 128]"))
    partial = tmp_path / "part" / "p.sqlite"
    assert runner.invoke(main, ["run", str(part), "--store", str(partial), "--quiet"]).exit_code == 0
    st = runner.invoke(main, ["status", str(partial), "--spec", str(spec)])
    assert "6 of 9 cells done, 3 missing" in st.output
    assert set(re.findall(r"S=(\d+)", st.output)) == {"32"}
    with Store(store, create=False) as s:
        row = s.rows()[0]
        assert row["provenance"]["torch"] == torch.__version__
        assert row["provenance"]["dtype"] == "float32"
        assert {"train_loss", "test_acc", "error_gap", "loss_gap"} <= set(row["metrics"])
        assert s.weights_path(row["cell_id"]).is_file()
        assert s.series(row["cell_id"])  # the training objective along training


@pytest.mark.parametrize(
    ("content", "store", "match"),
    [
        ("[data]\nname = ", None, "is not valid TOML"),
        ("name='x'\n[data]\nname='nope'\n[model]\nfamily='resnet'\n[train]\n[sweep]\nsample_size=[8]",
         None, "unknown data set 'nope'"),
        (SPEC_TOML.format(steps=5, group_size=4, ckpt=120), "FILE/sub/x.sqlite", "is not writable"),
    ],
)
def test_bad_inputs_give_one_line_errors_and_write_nothing(tmp_path, content, store, match):
    spec = write_spec(tmp_path / "bad.toml", content)
    blocker = tmp_path / "FILE"
    blocker.write_text("a file, not a folder")
    target = tmp_path / "runs" / "x.sqlite" if store is None else Path(str(tmp_path / store))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    res = CliRunner().invoke(main, ["run", str(spec), "--store", str(target), "--quiet"])
    assert res.exit_code != 0
    err_lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(err_lines) == 1 and match in err_lines[0], res.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_diverged_cells_are_recorded_and_the_sweep_goes_on(tmp_path):
    spec = spec_of(train={"steps": 40, "optimizer": "sgd", "lr": 1e-2},
                   sweep={"sample_size": [64], "seed": [0], "lr": [1e-2, 1e7]})
    summary = run_sweep(spec, tmp_path / "d.sqlite")
    assert summary.trained == 2 and summary.diverged == 1
    with Store(tmp_path / "d.sqlite", create=False) as st:
        rows = {r["config"]["train"]["lr"]: r for r in st.rows()}
    assert rows[1e7]["status"] == "diverged" and rows[1e7]["diverged_step"] >= 0
    assert rows[1e-2]["status"] == "done" and rows[1e-2]["diverged_step"] == -1


# -- interruption and concurrency ---------------------------------------------------------------

def _resdyn(*args):
    return [sys.executable, "-m", "resdyn.cli", *args]


def test_sigkill_mid_sweep_then_rerun_equals_an_uninterrupted_run(tmp_path):
    spec = write_spec(tmp_path / "s.toml", SPEC_TOML.format(steps=400, group_size=2, ckpt=0.05))
    ref_store, store = tmp_path / "ref.sqlite", tmp_path / "killed.sqlite"
    subprocess.run(_resdyn("run", str(spec), "--store", str(ref_store), "--quiet", "--threads", "1"),
                   check=True)
    proc = subprocess.Popen(_resdyn("run", str(spec), "--store", str(store), "--quiet",
                                    "--threads", "1"))
    deadline = time.time() + 120
    while count_rows(store) < 1 and time.time() < deadline:
        time.sleep(0.05)
    # Let the next group get some way in (and checkpoint), then kill without warning.
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = count_rows(store)
    assert 1 <= partial < 9
    ckpts = list((Path(str(store) + ".d") / "checkpoints").glob("*.safetensors"))
    subprocess.run(_resdyn("run", str(spec), "--store", str(store), "--quiet", "--threads", "1"),
                   check=True)
    ref, got = _metrics(ref_store), _metrics(store)
    assert set(ref) == set(got) and len(got) == 9
    assert ref == got  # every metric bitwise (JSON floats round-trip exactly)
    for cid in ref:
        a, b = _weights(ref_store, cid), _weights(store, cid)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((Path(str(store) + ".d") / "checkpoints").glob("*.safetensors"))
    print(f"killed after {partial} rows with {len(ckpts)} checkpoints on disk")


def test_two_concurrent_runs_neither_lose_nor_duplicate_rows(tmp_path):
    spec = write_spec(tmp_path / "s.toml", SPEC_TOML.format(steps=150, group_size=1, ckpt=120))
    store = tmp_path / "c.sqlite"
    procs = [subprocess.Popen(_resdyn("run", str(spec), "--store", str(store), "--quiet",
                                      "--threads", "1"), stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    trained = [int(o.split(" trained now")[0].rsplit(" ", 1)[1]) for o in outs]
    # Leases: every cell trained by exactly one of the two runs.
    assert sum(trained) == 9, outs
    with sqlite3.connect(store) as db:
        ids = [r[0] for r in db.execute("SELECT cell_id FROM cells")]
    assert len(ids) == len(set(ids)) == 9


def test_an_expired_lease_is_taken_over(tmp_path):
    spec = spec_of()
    cells = expand(spec)
    with Store(tmp_path / "l.sqlite") as st:
        # A lease long enough to outlast the next claim on a loaded machine.
        assert len(st.claim([c.cell_id for c in cells], "dead-run", seconds=1.0)) == 4
        assert st.claim([c.cell_id for c in cells], "other", seconds=60) == []
    time.sleep(1.1)
    with Store(tmp_path / "l.sqlite") as st:
        assert len(st.claim([c.cell_id for c in cells], "live-run", seconds=60)) == 4
        assert st.claim([c.cell_id for c in cells], "third", seconds=60) == []


# -- Ray ----------------------------------------------------------------------------------------

def test_ray_executor_retries_a_killed_worker_and_matches_local(tmp_path):
    ray = pytest.importorskip("ray")
    from resdyn.sweeps.executors import RayExecutor

    spec = spec_of(train={"steps": 300, "lr": 1e-2}, run={"group_size": 2})
    local = tmp_path / "local.sqlite"
    run_sweep(spec, local)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    killed = []
    import threading

    sweep_over = threading.Event()

    def killer():
        # Watch for as long as the sweep runs (Ray starts slowly on a loaded machine): the first
        # worker to write its pid file is killed mid-group.
        while not sweep_over.is_set() and not killed:
            for f in pid_dir.glob("*.pid"):
                pid = int(f.stem)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.02)

    t = threading.Thread(target=killer)
    t.start()
    try:
        ex = RayExecutor(threads=1, num_cpus=2, pid_dir=str(pid_dir))
        summary = run_sweep(spec, tmp_path / "ray.sqlite", ex)
    finally:
        sweep_over.set()
        t.join()
        ray.shutdown()
    assert killed, "no worker was killed"
    assert summary.trained == 4
    # The killed worker's group ran again in another worker process (a new one, or a reused one
    # that overwrote its own pid file with this group's cells).
    victim = (pid_dir / f"{killed[0]}.pid").read_text()
    assert victim and any(f.read_text() == victim for f in pid_dir.glob("*.pid")
                          if f.stem != str(killed[0]))
    assert _metrics(local) == _metrics(tmp_path / "ray.sqlite")


# -- dependencies: warm starts across depth -----------------------------------------------------

WARM = {
    "name": "warm",
    "data": {"name": "two_spirals", "pool_size": 256, "test_size": 64},
    "model": {"family": "dnl", "width": 4},
    "train": {"steps": 30, "lr": 1e-2},
    "sweep": {"sample_size": [64], "seed": [0, 1], "depth": [2, 4]},
    "warm_start": {"key": "depth", "seeds": [1]},
}


def _warm_spec(**over):
    raw = json.loads(json.dumps(WARM))
    raw.update(over)
    return parse_spec(raw)


def test_warm_start_cells_depend_on_the_shallower_level_and_train_from_its_best(tmp_path):
    from resdyn.models.io import load_params as load

    spec = _warm_spec()
    cells = {(c.model.depth, c.seed): c for c in expand(spec)}
    assert len(cells) == 4
    shallow = {cells[(2, 0)].cell_id, cells[(2, 1)].cell_id}
    assert set(cells[(4, 1)].warm_from) == shallow
    assert cells[(4, 0)].warm_from == () and cells[(2, 1)].warm_from == ()
    assert cells[(4, 1)].config["warm_start"] == {"key": "depth", "from": list(cells[(4, 1)].warm_from)}

    # The shallow level alone first: the same cells (same ids), then the whole spec resumes and
    # trains only the deeper level, from what the store holds.
    store = tmp_path / "w.sqlite"
    first = run_sweep(_warm_spec(sweep={**WARM["sweep"], "depth": [2]}, warm_start={}), store)
    assert first.trained == 2
    second = run_sweep(spec, store)
    assert (second.already_done, second.trained, second.waiting) == (2, 2, [])

    with Store(store, create=False) as st:
        rows = {r["cell_id"]: r for r in st.rows()}
        objective = {cid: rows[cid]["metrics"]["final_train_objective"] for cid in shallow}
        best = min(objective, key=objective.get)
        src_model, src, _ = load(st.weights_path(best))
        got = load(st.weights_path(cells[(4, 1)].cell_id))[1]
    src1 = {k: v.unsqueeze(0) for k, v in src.items()}
    warm = src_model.prolong(src1, cells[(4, 1)].model)
    # Pi theta at the old nodes keeps the old values (P1 interpolation), the new pairs are averages.
    assert torch.equal(warm["A"][0], src["A"])
    again = train_group([cells[(4, 1)]], warm={cells[(4, 1)].cell_id: WarmStart(warm, src_model, src1)})[0]
    cold = train_group([cells[(4, 1)]])[0]
    assert all(torch.equal(again.weights[k], got[k]) for k in got)
    assert not all(torch.equal(cold.weights[k], got[k]) for k in got)


@pytest.mark.parametrize(("over", "match"), [
    ({"warm_start": {"key": "width"}}, r"spec key warm_start.key: must name a swept model key"),
    ({"warm_start": {"key": "depth", "from": 1}}, r"spec key warm_start.from: unknown key"),
    ({"warm_start": {"key": "depth", "seeds": ["a"]}}, r"spec key warm_start.seeds: must be a list"),
    ({"model": {"family": "resnet", "width": 4}}, r"spec key warm_start.key: model family 'resnet' "
                                                  r"cannot start from a shallower solution"),
])
def test_warm_start_errors_name_the_key_path(over, match):
    with pytest.raises(SpecError, match=match):
        _warm_spec(**over)
