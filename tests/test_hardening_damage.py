"""Damaged stores: every command ends in one error line naming the store, the row and
`resdyn status --verify`; damaged checkpoints (a directory, re-signed wrong contents) retrain."""

import json
import shutil
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from helpers import one_cell_spec
from resdyn.cli.main import main
from resdyn.sweeps import Store, expand, parse_spec, run_sweep
from resdyn.sweeps.runner import train_group

BASE = one_cell_spec("d", 40)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A one-cell store (its reference run), the cell id and a valid mid-run checkpoint."""
    spec = parse_spec(BASE)
    ref = tmp_path_factory.mktemp("ref") / "s.sqlite"
    run_sweep(spec, ref)
    saved = {}
    train_group(expand(spec), checkpoint=(lambda cid: None,
                                          lambda cid, t, m: saved.update({cid: (t, m)})),
                checkpoint_seconds=0)
    ((cid, (tensors, meta)),) = saved.items()
    return spec, ref, cid, tensors, meta


def _copy(ref: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "store" / "s.sqlite"
    dest.parent.mkdir()
    shutil.copy(ref, dest)
    shutil.copytree(Path(str(ref) + ".d"), Path(str(dest) + ".d"))
    return dest


def _sql(path: Path, sql: str, *args) -> None:
    with sqlite3.connect(path) as db:
        db.execute(sql, args)
    db.close()


def _commands(path: Path, cid: str, out: Path) -> list[list[str]]:
    return [["results", str(path)], ["status", str(path)], ["status", str(path), "--verify"],
            ["bound", str(path), cid], ["report", str(path), "--out", str(out)]]


def _flip_json_byte(path: Path) -> None:
    """Flip one byte inside the stored config text into an invalid UTF-8 byte."""
    data = bytearray(path.read_bytes())
    at = data.index(b'{"data": {"name": "two_spirals"}')
    data[at + 12] = 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped_byte": (_flip_json_byte, "column 'config' is not UTF-8 text"),
    "nested_json": (lambda p: _sql(p, "UPDATE cells SET config = ?", "[" * 200_000 + "]" * 200_000),
                    "nested too deeply"),
    "nested_50": (lambda p: _sql(p, "UPDATE cells SET metrics = ?", '{"a": ' * 50 + "1" + "}" * 50),
                  "nested deeper than 32"),
    "metrics_list": (lambda p: _sql(p, "UPDATE cells SET metrics = '[1, 2]'"), "not a JSON object"),
    "metric_text": (lambda p: _sql(p, """UPDATE cells SET measures = '{"x": "<b>"}'"""),
                    "not a number"),
    "config_scalar": (lambda p: _sql(p, "UPDATE cells SET config = '5'"), "not a JSON object"),
    "long_spec": (lambda p: _sql(p, "UPDATE cells SET spec = ?", "s" * 100_000),
                  "is not 1-128 printable characters"),
    "nul_spec": (lambda p: _sql(p, "UPDATE cells SET spec = ?", "a\x00b"),
                 "is not 1-128 printable characters"),
    "blob_weights": (lambda p: _sql(p, "UPDATE cells SET weights = x'00ff'"), "is not text"),
    "bad_status": (lambda p: _sql(p, "UPDATE cells SET status = 'x'"), "is not 'done' or 'diverged'"),
    "sample_text": (lambda p: _sql(p, """UPDATE cells SET config = json_set(config, '$.seed', 'a')"""),
                    "config.seed"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_row_is_one_error_line_naming_store_row_and_verify(tmp_path, base, kind):
    _, ref, cid, _, _ = base
    path = _copy(ref, tmp_path)
    damage, what = DAMAGE[kind]
    damage(path)
    runner = CliRunner()
    for args in _commands(path, cid, tmp_path / "out"):
        res = runner.invoke(main, args)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 1 and len(lines) == 1, (args, res.output, res.exception)
        line = lines[0]
        assert line.startswith(f"error: store {path}") and what in line, (args, line)
        assert f"resdyn status --verify {path}" in line, line
        assert cid in line or kind in ("nested_json",) or "row" in line, line
    assert not (tmp_path / "out" / "report.md").exists()


OUTCOMES = {
    "list": "[1, 2]",
    "name_number": '{"name": 5}',
    "claims_bad": '{"name": "x", "claims": [{"text": 1}]}',
    "claim_verdict": '{"name": "x", "claims": [{"text": "a", "measured": "b", "verdict": "maybe"}]}',
    "figure_not_b64": '{"name": "x", "figures": {"f": "%%%"}}',
    "tables_bad": '{"name": "x", "tables": {"t": [1]}}',
}


@pytest.mark.parametrize("kind", sorted(OUTCOMES))
def test_a_stored_outcome_of_the_wrong_shape_is_one_error_line(tmp_path, base, kind):
    path = _copy(base[1], tmp_path)
    _sql(path, "INSERT INTO outcomes VALUES ('x', ?, 1.0)", OUTCOMES[kind])
    res = CliRunner().invoke(main, ["report", str(path), "--out", str(tmp_path / "out")])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1, (res.output, res.exception)
    assert lines[0].startswith(f"error: store {path}") and "outcome" in lines[0], lines[0]
    assert f"resdyn status --verify {path}" in lines[0]


def _rows(path):
    with Store(path, create=False) as st:
        return {r["cell_id"]: (r["metrics"], r["measures"]) for r in st.rows()}


def test_a_directory_at_the_checkpoint_path_is_set_aside_and_the_cell_retrains(tmp_path, base):
    spec, ref, cid, _, _ = base
    store = tmp_path / "s.sqlite"
    with Store(store) as st:
        ckpt = st.checkpoint_path(cid)
    ckpt.mkdir(parents=True)
    (ckpt / "inner").write_text("x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run_sweep(spec, store)
    assert summary.trained == 1
    assert any("not a regular file" in str(w.message) for w in caught)
    assert not ckpt.exists() and len(list((ckpt.parent / "damaged").iterdir())) == 1
    assert _rows(store) == _rows(ref)


def _resign(tensors: dict, meta: dict, change: str) -> tuple[dict, dict]:
    t = {k: v.clone() for k, v in tensors.items()}
    m = json.loads(json.dumps(meta))
    if change == "shape":
        t["param.A"] = t["param.A"][..., :1].contiguous()
    elif change == "missing":
        del t["opt.m.A"]
    elif change == "extra":
        t["param.Z"] = torch.zeros(3)
    elif change == "step_beyond":
        t["step"] = torch.tensor([10**9])
    elif change == "dtype":
        t["param.A"] = t["param.A"].double()
    elif change == "series":
        m["series"] = {"x": [["a", None]]}
    elif change == "meta_list":
        m = []
    elif change == "active":
        t["active"] = torch.full_like(t["active"], 7)
    return t, m


@pytest.mark.parametrize("change", ["shape", "missing", "extra", "step_beyond", "dtype", "series",
                                    "meta_list", "active"])
def test_a_re_signed_checkpoint_with_wrong_contents_retrains_without_a_traceback(tmp_path, base,
                                                                                   change):
    spec, ref, cid, tensors, meta = base
    store = tmp_path / "s.sqlite"
    t, m = _resign(tensors, meta, change)
    with Store(store) as st:  # save_checkpoint signs it: a correct sha256 over wrong contents
        st.save_checkpoint(cid, t, m)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run_sweep(spec, store)
    assert summary.trained == 1
    msgs = " ".join(str(w.message) for w in caught)
    assert "train from scratch" in msgs or "restarts from scratch" in msgs, msgs
    assert _rows(store) == _rows(ref)  # from scratch: the numbers of an uninterrupted run


# Each command of every damaged store in a fresh interpreter: its peak memory and time are its own.
BOUNDED = """
import json, resource, sys, time
from click.testing import CliRunner
from resdyn.cli.main import main
def peak_kib():  # this process's own peak (ru_maxrss would include the parent's across exec)
    return int(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM")))
t0, out = time.monotonic(), []
for args in json.loads(sys.argv[1]):
    res = CliRunner().invoke(main, args)
    out.append([res.exit_code, res.output, repr(res.exception)])
print(json.dumps({"results": out, "seconds": time.monotonic() - t0,
                  "maxrss_mib": peak_kib() / 1024}))
"""


def _outside_weights(path: Path, tmp_path: Path, cid: str) -> None:
    outside = tmp_path / "outside" / "w.safetensors"
    outside.parent.mkdir()
    shutil.copy(Path(str(path) + ".d") / "weights" / f"{cid}.safetensors", outside)
    _sql(path, "UPDATE cells SET weights = ?", str(outside))


BOUNDED_CASES = {**{k: v[0] for k, v in DAMAGE.items() if k in ("flipped_byte", "nested_json",
                                                                 "long_spec", "nul_spec")},
                 "weights_outside": None, "weights_dotdot": None}


@pytest.mark.parametrize("kind", sorted(BOUNDED_CASES))
def test_damaged_stores_cost_under_30_s_and_500_mb_and_write_nothing_outside(tmp_path, base, kind):
    _, ref, cid, _, _ = base
    path = _copy(ref, tmp_path)
    if kind == "weights_outside":
        _outside_weights(path, tmp_path, cid)
    elif kind == "weights_dotdot":
        _sql(path, "UPDATE cells SET weights = '../../../../etc/passwd'")
    else:
        BOUNDED_CASES[kind](path)
    def outside_store() -> list[str]:
        kept = (path.parent, tmp_path / "out")  # the store's folder, the report's folder
        return sorted(str(p) for p in tmp_path.rglob("*")
                      if p not in kept and not any(k in p.parents for k in kept))

    before = outside_store()
    proc = subprocess.run([sys.executable, "-c", BOUNDED, json.dumps(_commands(path, cid, tmp_path / "out"))],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    for (code, output, exc), args in zip(got["results"], _commands(path, cid, tmp_path / "out"),
                                         strict=True):
        lines = [ln for ln in output.splitlines() if ln.strip()]
        if kind.startswith("weights") and args[0] != "bound":
            continue  # the other commands do not read weights (status --verify: its own test)
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: store"), (args, output, exc)
    assert got["seconds"] < 30 and got["maxrss_mib"] < 500, got
    assert outside_store() == before  # nothing written outside the store's and report's folders
    assert kind.startswith("weights") or not (tmp_path / "out" / "report.md").exists()
