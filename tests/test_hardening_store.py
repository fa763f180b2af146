"""Damaged, empty, foreign and read-only stores; weights integrity; damaged checkpoints; races."""

import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from helpers import SPEC_TOML, count_rows
from resdyn.cli.main import main
from resdyn.models.io import load_params
from resdyn.sweeps import Store, expand, parse_spec, run_sweep
from resdyn.sweeps.runner import train_group
from resdyn.sweeps.store import _HOST_TAG, StoreError, sha256_file

BASE = {
    "name": "h",
    "data": {"name": "two_spirals"},
    "model": {"family": "resnet", "width": 4, "depth": 2},
    "train": {"steps": 40, "lr": 1e-2},
    "sweep": {"sample_size": [32], "seed": [0, 1, 2]},
}


@pytest.fixture(scope="module")
def trained():
    """Three trained cells of BASE (spec, results)."""
    spec = parse_spec(BASE)
    return spec, train_group(expand(spec))


def _filled(path: Path, trained) -> Path:
    spec, results = trained
    with Store(path) as st:
        for r in results:
            assert st.write(spec.name, r)
    return path


def _one_error_line(res, path) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1, res.output
    assert len(lines) == 1, res.output
    assert lines[0].startswith("error: store") and str(path) in lines[0], lines[0]
    return lines[0]


def _damage_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for start in range(page, len(data), page):  # every page but the first (the schema)
        data[start : start + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def _sql(path: Path, sql: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute(sql)
    db.close()


DAMAGE = {
    "header": (lambda p: p.write_bytes(b"garbage!" * 2 + p.read_bytes()[16:]), "not a database"),
    "pages": (_damage_pages, "damaged"),
    "bad_json": (lambda p: _sql(p, "UPDATE cells SET metrics = '{oops'"), "is not valid JSON"),
    "bad_utf8": (lambda p: _sql(p, "UPDATE cells SET config = CAST(x'fffe41' AS TEXT)"), "cannot be read"),
    "foreign": (lambda p: (p.unlink(), _sql(p, "CREATE TABLE cells (a, b)")), "lacks column"),
    "no_cells": (lambda p: (p.unlink(), _sql(p, "CREATE TABLE other (a)")), "no 'cells' table"),
    "zero_bytes": (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_store_is_one_line_store_error_for_every_command(tmp_path, trained, kind):
    path = _filled(tmp_path / "s.sqlite", trained)
    damage, what = DAMAGE[kind]
    damage(path)
    before = path.read_bytes()
    runner = CliRunner()
    for args in (["results", str(path)], ["status", str(path)], ["status", str(path), "--verify"],
                 ["report", str(path), "--out", str(tmp_path / "out")]):
        line = _one_error_line(runner.invoke(main, args), path)
        assert what in line, (args, line)
    with pytest.raises(StoreError, match=re.escape(what)), Store(path, create=False) as st:
        st.rows()
    # Refusing to read it changed nothing and wrote nothing beside it.
    assert path.read_bytes() == before
    assert not (tmp_path / "out").exists()


def test_a_read_only_store_can_be_read_and_nothing_is_written(tmp_path, trained):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = _filled(folder / "s.sqlite", trained)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    path.chmod(stat.S_IRUSR | stat.S_IRGRP)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        res = CliRunner().invoke(main, ["results", str(path), "--format", "json"])
        assert res.exit_code == 0, res.output
        assert res.output.count('"cell_id"') == 3
        res = CliRunner().invoke(main, ["status", str(path), "--verify"])
        assert res.exit_code == 0 and "verify: 3 of 3 weights files match" in res.output, res.output
        with Store(path, create=False) as st:  # not writable to this process: opened read-only
            assert len(st.rows()) == 3
    finally:
        folder.chmod(stat.S_IRWXU)
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


OLD_CELLS = """CREATE TABLE cells (cell_id TEXT PRIMARY KEY, spec TEXT NOT NULL, status TEXT NOT NULL,
config TEXT NOT NULL, metrics TEXT NOT NULL, measures TEXT NOT NULL, diverged INTEGER NOT NULL,
diverged_step INTEGER NOT NULL, weights TEXT, timing TEXT NOT NULL, provenance TEXT NOT NULL,
finished_at REAL NOT NULL)"""


def test_a_store_without_the_sha256_column_stays_readable_and_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(OLD_CELLS)
        db.execute("INSERT INTO cells VALUES ('c0', 'old', 'done', '{}', '{\"m\": 1.5}', '{}', 0, -1, "
                   "NULL, '{}', '{}', 1.0)")
    db.close()
    with Store(path, create=False, readonly=True) as st:
        rows = st.rows()
    assert rows[0]["metrics"] == {"m": 1.5} and rows[0]["sha256"] is None
    with sqlite3.connect(path) as db:  # reading did not migrate
        assert "sha256" not in {r[1] for r in db.execute("PRAGMA table_info(cells)")}
    db.close()
    with Store(path) as st:
        assert st.rows()[0]["metrics"] == {"m": 1.5}
    with sqlite3.connect(path) as db:
        assert "sha256" in {r[1] for r in db.execute("PRAGMA table_info(cells)")}
    db.close()


def test_status_verify_names_missing_and_damaged_weights(tmp_path, trained):
    path = _filled(tmp_path / "s.sqlite", trained)
    with Store(path, create=False) as st:
        rows = st.rows()
        files = [st.weights_path(r["cell_id"]) for r in rows]
        for r, f in zip(rows, files, strict=True):
            assert r["sha256"] == sha256_file(f)
    files[0].unlink()
    data = files[1].read_bytes()
    files[1].write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one flipped bit
    res = CliRunner().invoke(main, ["status", str(path), "--verify"])
    assert res.exit_code == 1
    assert "verify: 1 of 3 weights files match" in res.output
    assert f"{rows[0]['cell_id']}: missing ({files[0]})" in res.output
    assert f"{rows[1]['cell_id']}: damaged ({files[1]}: sha256" in res.output
    assert rows[2]["cell_id"] not in res.output


# -- checkpoints --------------------------------------------------------------------------------

def _flip_last(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-3] ^= 0x10
    p.write_bytes(bytes(data))


def _nan_param(p: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(p), framework="pt") as f:
        head = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    key = next(k for k in tensors if k.startswith("param."))
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(p), metadata=head)


CORRUPT = {
    "garbage": lambda p: p.write_bytes(b"\x00not a safetensors file" * 8),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "header_cut": lambda p: p.write_bytes(p.read_bytes()[:12]),
    "flipped_bit": _flip_last,
    "nan_params": _nan_param,
    "empty": lambda p: p.write_bytes(b""),
}


@pytest.fixture(scope="module")
def one_cell(tmp_path_factory):
    """A one-cell spec, its reference store (uninterrupted) and a valid mid-run checkpoint."""
    raw = {**BASE, "sweep": {"sample_size": [32], "seed": [0]}}
    spec = parse_spec(raw)
    ref = tmp_path_factory.mktemp("ref") / "ref.sqlite"
    run_sweep(spec, ref)
    saved = {}
    train_group(expand(spec), checkpoint=(lambda cid: None, lambda cid, t, m: saved.update({cid: (t, m)})),
                checkpoint_seconds=0)
    (cid, (tensors, meta)), = saved.items()
    assert 0 < int(tensors["step"][0]) < 40
    return spec, ref, cid, tensors, meta


def _rows(path):
    with Store(path, create=False) as st:
        return {r["cell_id"]: (r["metrics"], r["measures"]) for r in st.rows()}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_a_damaged_checkpoint_is_named_set_aside_and_its_cell_restarts(tmp_path, one_cell, kind):
    spec, ref, cid, tensors, meta = one_cell
    store = tmp_path / "s.sqlite"
    with Store(store) as st:
        st.save_checkpoint(cid, tensors, meta)
        ckpt = st.checkpoint_path(cid)
    CORRUPT[kind](ckpt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run_sweep(spec, store)
    assert summary.trained == 1
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any(f"damaged checkpoint {ckpt}" in m and "restarts from scratch" in m for m in msgs), msgs
    assert not ckpt.exists()
    assert len(list((ckpt.parent / "damaged").iterdir())) == 1
    assert _rows(store) == _rows(ref)  # from scratch: the same numbers as an uninterrupted run
    with Store(store, create=False) as st:
        assert st.verify() == [(cid, "ok")]


def test_a_valid_checkpoint_is_still_resumed(tmp_path, one_cell):
    spec, ref, cid, tensors, meta = one_cell
    store = tmp_path / "s.sqlite"
    with Store(store) as st:
        st.save_checkpoint(cid, tensors, meta)
        assert st.checkpoint_steps([cid]) == {cid: int(tensors["step"][0])}
        loaded = st.load_checkpoint(cid)
    assert loaded is not None and all(torch.equal(loaded[0][k], tensors[k]) for k in tensors)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        run_sweep(spec, store)
    assert _rows(store) == _rows(ref)


# -- temporary files, races, SIGTERM ---------------------------------------------------------------

def test_temporary_files_of_dead_runs_are_removed_and_live_ones_kept(tmp_path, trained):
    path = _filled(tmp_path / "s.sqlite", trained)
    files = Path(str(path) + ".d")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cid = trained[1][0].cell_id
    orphans = [files / "weights" / f".{cid}.{_HOST_TAG}-{dead.pid}-0123abcd.pending",
               files / "weights" / f"..{cid}.{_HOST_TAG}-{dead.pid}-0123abcd.pending.x1y2.tmp",
               files / "checkpoints" / f"{cid}.{dead.pid}.tmp"]
    live = [files / "weights" / f".{cid}.{_HOST_TAG}-{os.getpid()}-0123abcd.pending",
            files / "weights" / f".{cid}.00000000-{dead.pid}-0123abcd.pending"]  # another host
    (files / "checkpoints").mkdir(exist_ok=True)
    for p in orphans + live:
        p.write_bytes(b"x" * 100)
    with Store(path) as st:
        assert len(st.rows()) == 3
    assert not any(p.exists() for p in orphans)
    assert all(p.exists() for p in live)


def _race(path: Path, results, spec_name: str) -> list[bool]:
    barrier = threading.Barrier(len(results), timeout=60)
    won: list = [None] * len(results)
    errors: list[BaseException] = []

    def finish(i: int) -> None:
        try:
            with Store(path) as st:
                barrier.wait()
                won[i] = st.write(spec_name, results[i], owner=f"finisher-{i}")
        except BaseException as e:  # a finisher that dies must fail the test, not hang its partner
            barrier.abort()
            errors.append(e)

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return won


def test_two_finishers_racing_on_one_cell_keep_one_row_whose_sha256_matches_the_file(tmp_path, trained):
    spec, results = trained
    first = results[0]
    # The second finisher trained the same cell to other parameters (a lapsed lease, another seed).
    other = type(first)(**{**first.__dict__, "weights": {k: v + 1.0 for k, v in first.weights.items()},
                           "metrics": {**first.metrics, "final_train_objective": -1.0}})
    for round_ in range(6):
        path = tmp_path / f"r{round_}.sqlite"
        won = _race(path, [first, other] if round_ % 2 else [other, first], spec.name)
        assert sorted(won) == [False, True]
        winner = ([first, other] if round_ % 2 else [other, first])[won.index(True)]
        with Store(path, create=False) as st:
            (row,) = st.rows()
            wfile = st.weights_path(first.cell_id)
            assert row["sha256"] == sha256_file(wfile)
            assert row["metrics"] == winner.metrics
            assert st.verify() == [(first.cell_id, "ok")]
        params = load_params(wfile)[1]
        assert all(torch.equal(params[k], winner.weights[k]) for k in winner.weights)
        assert sorted(p.name for p in wfile.parent.iterdir()) == [wfile.name]  # no temporary left


def test_a_late_finisher_does_not_overwrite_the_kept_weights(tmp_path, trained):
    spec, results = trained
    first = results[0]
    late = type(first)(**{**first.__dict__, "weights": {k: v * 0 for k, v in first.weights.items()}})
    path = tmp_path / "s.sqlite"
    with Store(path) as st:
        assert st.write(spec.name, first) is True
        kept = st.weights_path(first.cell_id).read_bytes()
        assert st.write(spec.name, late) is False
        assert st.weights_path(first.cell_id).read_bytes() == kept
        assert st.verify() == [(first.cell_id, "ok")]
        assert sorted(p.name for p in st.weights_path(first.cell_id).parent.iterdir()) == \
            [st.weights_path(first.cell_id).name]


def test_a_cell_id_is_never_a_path(tmp_path):
    with Store(tmp_path / "s.sqlite") as st:
        for bad in ("../../x", "/abs", "a/b", "", "x\n"):
            with pytest.raises(ValueError, match="cell id must be"):
                st.weights_path(bad)
            with pytest.raises(ValueError, match="cell id must be"):
                st.checkpoint_path(bad)


@pytest.mark.slow
def test_sigterm_releases_the_leases_says_so_and_a_rerun_completes(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC_TOML.format(steps=400, group_size=1, ckpt=120))
    store = tmp_path / "t.sqlite"
    cmd = [sys.executable, "-m", "resdyn.cli", "run", str(spec), "--store", str(store), "--quiet",
           "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while count_rows(store) < 1 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "interrupted: finished cells are in" in err and "Traceback" not in err
    with Store(store, create=False) as st:
        assert st.leases() == []
        assert 1 <= len(st.rows()) < 9
    subprocess.run(cmd, check=True, capture_output=True)
    with Store(store, create=False) as st:
        assert len(st.rows()) == 9
        assert all(state == "ok" for _, state in st.verify())


def _open_together(path: Path) -> list[StoreError]:
    barrier, errors = threading.Barrier(2, timeout=60), []

    def open_it() -> None:
        barrier.wait()
        try:
            with Store(path):
                pass
        except StoreError as e:
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_two_connections_creating_one_store_together_both_open_it(tmp_path):
    # SQLite answers a journal-mode switch that races another connection's open with
    # "database is locked" at once (no busy handler); before the retry, ~1 round in 15 failed.
    for round_ in range(100):
        errors = _open_together(tmp_path / f"c{round_}.sqlite")
        assert not errors, errors[0]
