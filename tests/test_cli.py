import pytest
from click.testing import CliRunner

from resdyn.cli.main import main


def test_every_command_has_help():
    runner = CliRunner()
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0
    names = main.list_commands(None)
    assert "demo" in names
    for name in names:
        res = runner.invoke(main, [name, "--help"])
        assert res.exit_code == 0, (name, res.output)
        assert "Usage:" in res.output


def test_demo_prints_accuracy_and_gap():
    res = CliRunner().invoke(main, ["demo", "-S", "256", "--steps", "30", "--test-size", "200",
                                    "--dtype", "float64"])
    assert res.exit_code == 0, res.output
    assert "discrete ResNet" in res.output and "continuous ResNet" in res.output
    assert res.output.count("gap") >= 2


def test_cuda_without_a_gpu_is_a_clear_usage_error():
    import torch

    if torch.cuda.is_available():
        return
    res = CliRunner().invoke(main, ["demo", "--device", "cuda"])
    assert res.exit_code == 2
    assert "no CUDA GPU is available" in res.output


@pytest.mark.slow
def test_bound_store_cell_id_reads_the_cell_and_reproduces_the_stored_bound(tmp_path_factory):
    """Every cell of the quick sample-size store (its whole grid, fewer steps): `resdyn bound STORE
    CELL_ID` takes data, S, seed and options from the store and prints the row's bound."""
    import re

    from report_stores import build
    from resdyn.sweeps.store import Store

    store = build(tmp_path_factory.getbasetemp(), "sample-size-quick")
    with Store(store, create=False) as st:
        rows = st.rows()
    assert len(rows) == 2 * 2 * 5 * 3
    runner = CliRunner()
    finite = 0
    for row in rows:
        res = runner.invoke(main, ["bound", str(store), row["cell_id"]])
        assert res.exit_code == 0, res.output
        cfg = row["config"]
        assert (f"data {cfg['data']['name']}, S={cfg['sample_size']}, seed={cfg['seed']}"
                in res.output)
        m = re.search(r"test_error_bound stored in the row (\S+), recomputed now (\S+)", res.output)
        stored, now = float(m.group(1)), float(m.group(2))
        want = row["measures"]["test_error_bound"]
        assert stored == want or (stored != stored and want != want)
        assert now == want or (now != now and want != want), (row["cell_id"], now, want)
        finite += now == now
        # the assembled bound covers the discrete ResNet; continuous-time cells read "nan"
        assert (now == now) == (cfg["model"]["family"] == "resnet")
    assert finite == len(rows) // 2
    res = runner.invoke(main, ["bound", str(store), "ffffffffff"])
    assert res.exit_code == 2 and "no cell 'ffffffffff'" in res.output
    res = runner.invoke(main, ["bound", str(store), rows[0]["cell_id"], "-S", "64"])
    assert res.exit_code == 2 and "come from the store" in res.output


def test_run_dry_run_and_dtype(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text("""
name = "dry"
[data]
name = "two_spirals"
[model]
family = "resnet"
width = 4
depth = 2
[train]
steps = 12
[sweep]
data = [{ name = "two_spirals" }, { name = "digits" }]
sample_size = [16, 32]
""")
    store = tmp_path / "s.sqlite"
    res = CliRunner().invoke(main, ["run", str(spec), "--store", str(store), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "spec dry: 4 cells, 0 already in" in res.output and "4 to train in 2 groups" in res.output
    assert "estimated time: about" in res.output
    assert not store.exists()  # a dry run writes nothing
    res = CliRunner().invoke(main, ["run", str(spec), "--store", str(store), "--quiet", "--dtype",
                                    "float64"])
    assert res.exit_code == 0, res.output
    from resdyn.sweeps.store import Store

    with Store(store, create=False) as st:
        assert {r["config"]["dtype"] for r in st.rows()} == {"float64"}
    res = CliRunner().invoke(main, ["run", str(spec), "--store", str(store), "--dry-run",
                                    "--dtype", "float64"])
    assert "4 already in" in res.output and "0 to train" in res.output


def test_run_says_from_which_step_it_resumes(tmp_path):
    from resdyn.sweeps.grid import expand
    from resdyn.sweeps.runner import train_group
    from resdyn.sweeps.spec import load_spec
    from resdyn.sweeps.store import Store

    spec = tmp_path / "s.toml"
    spec.write_text("""
name = "resume"
[data]
name = "two_spirals"
[model]
family = "resnet"
width = 4
depth = 2
[train]
steps = 40
[sweep]
sample_size = [16, 32]
""")
    store = tmp_path / "s.sqlite"
    cells = expand(load_spec(spec))
    with Store(store) as st:  # an interrupted run: checkpoints on disk, no rows
        train_group(cells, "cpu", (st.load_checkpoint, st.save_checkpoint), checkpoint_seconds=0.0)
        steps = st.checkpoint_steps(c.cell_id for c in cells)
    assert set(steps.values()) == {38}  # every 2 steps, the last one before the end
    res = CliRunner().invoke(main, ["run", str(spec), "--store", str(store), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "resume: resumed 2 cells from step 38" in res.output
