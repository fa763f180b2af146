"""A store written by an older main (tests/fixtures/store-main, never regenerated) still opens:
its results and report print exactly what that main printed, a run recognises its cells, and its
weights load and reproduce its stored test accuracy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import resdyn
from resdyn.cli.main import main
from resdyn.sweeps.store import Store

FIXTURE = Path(__file__).parent / "fixtures" / "store-main"
IDS = {"6e07ecba1540556f5403", "60ad6a47db4ba135c1fd", "aceeecb20e5631d0f0e1",
       "dc36afeaff96ddfa675b"}


@pytest.fixture
def store_dir(tmp_path, monkeypatch) -> Path:
    """A copy of the fixture folder, the working directory (the committed results name the
    weights files relative to it)."""
    folder = tmp_path / "store-main"
    shutil.copytree(FIXTURE, folder)
    monkeypatch.chdir(folder)
    return folder


def test_the_fixture_is_the_old_store():
    """The ids the fixture's files carry are the ones the tests below count on."""
    assert {p.stem for p in (FIXTURE / "store.sqlite.d" / "weights").iterdir()} == IDS


@pytest.mark.parametrize(("fmt", "name"), [("csv", "results.csv"), ("json", "results.json")])
def test_results_print_exactly_what_the_old_main_printed(store_dir, fmt, name):
    res = CliRunner().invoke(main, ["results", "store.sqlite", "--format", fmt])
    assert res.exit_code == 0, res.output
    assert res.output == (store_dir / name).read_text()


def test_report_writes_what_the_old_main_wrote(store_dir):
    res = CliRunner().invoke(main, ["report", "store.sqlite", "--out", "out"])
    assert res.exit_code == 0, res.output
    for name in ("report.md", "report-data.json"):
        assert (store_dir / "out" / name).read_text() == (store_dir / name).read_text(), name


def test_a_run_recognises_every_old_cell_and_trains_only_new_ones(store_dir):
    runner = CliRunner()
    res = runner.invoke(main, ["run", "spec.toml", "--store", "store.sqlite", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "4 cells; 4 already in the store, 0 trained now" in res.output
    spec = (store_dir / "spec.toml").read_text()
    more = spec.replace("sample_size = [32, 64]", "sample_size = [32, 64, 48]")
    assert more != spec
    (store_dir / "more.toml").write_text(more)
    res = runner.invoke(main, ["run", "more.toml", "--store", "store.sqlite", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "6 cells; 4 already in the store, 2 trained now" in res.output
    with Store(store_dir / "store.sqlite", create=False) as st:
        ids = st.done_ids()
    assert len(ids) == 6 and ids > IDS


def test_old_weights_load_and_reproduce_the_stored_test_accuracy(store_dir):
    for cid in sorted(IDS):
        cell = resdyn.load_cell(store_dir / "store.sqlite", cid)
        data = cell.data()
        dtype = next(iter(cell.params.values())).dtype
        x = data.prepare(data.x_test, dtype, "cpu")
        logits = cell.model.forward(cell.params, x.unsqueeze(0))[0]
        acc = (logits.argmax(-1) == data.y_test).to(torch.float64).mean().item()
        # test_acc is a float32 mean of 2000 0/1 values: equal to 1/2000 resolution
        assert acc == pytest.approx(cell.record.metrics["test_acc"], abs=1e-6), cid
