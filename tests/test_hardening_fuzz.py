"""Fuzz: 1,000 mutated copies of one small store (rows, JSON fields, paths, bytes, outcomes,
series) through `results`, `status --verify`, `bound` and `report`, in one subprocess with
memory, CPU-time and wall-clock limits and a fixed seed: no traceback, no hang, and no file
outside the store (a planted genuine weights file, /etc/passwd) ever opened.

The worker is this file run as a script (``python test_hardening_fuzz.py BASE WORK N SEED``)."""

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

N_STORES = 1000
SEED = 20261205
COMMAND_SECONDS = 20  # one command longer than this is a hang
MEMORY_BYTES = 6 * 2**30  # address space of the worker (torch reserves much it never touches)


# -- the mutations -------------------------------------------------------------------------------

JSON_COLUMNS = ("config", "metrics", "measures", "timing", "provenance")
NASTY_TEXT = ["../../etc/passwd", "/etc/passwd", "a\x00b", "x" * 5000, "<img src=x onerror=a()>",
              "", " ", "\n", "é", "\udcff".encode("utf-8", "surrogatepass").decode("latin-1"),
              "weights/../../outside/w.safetensors", "null", "NaN", "1e999", "-0"]


def _nasty_value(rng: random.Random, depth: int = 0):
    """A random JSON-able value of any type, sometimes nested, sometimes huge."""
    kind = rng.randrange(12)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**63, -(2**63), 10**30, 7])
    if kind == 3:
        return rng.choice([0.0, -0.0, 1e308, -1e308, float("nan"), float("inf"), 3.5])
    if kind == 4:
        return rng.choice(NASTY_TEXT)
    if kind == 5 and depth < 3:
        return [_nasty_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 6 and depth < 3:
        return {rng.choice([*NASTY_TEXT, "name", "family", "x"]): _nasty_value(rng, depth + 1)
                for _ in range(rng.randrange(4))}
    if kind == 7:
        n = rng.choice([33, 200, 5000])
        return json.loads("[" * n + "]" * n) if n < 900 else "deep"
    return rng.choice(["two_spirals", "resnet", "tanh", 16, 4, 0.01, {}, []])


def _mutate_json(rng: random.Random, value):
    """``value`` with one random path deleted, replaced or retyped."""
    if not isinstance(value, dict | list) or not value or rng.random() < 0.2:
        return _nasty_value(rng)
    keys = list(value) if isinstance(value, dict) else list(range(len(value)))
    k = rng.choice(keys)
    if isinstance(value, dict) and rng.random() < 0.25:
        del value[k]
        return value
    value[k] = _mutate_json(rng, value[k])
    return value


def _sql(path: Path, sql: str, args: tuple = ()) -> None:
    """Run one change; a change SQLite's constraints refuse leaves the store as it was."""
    db = sqlite3.connect(path)
    try:
        db.execute(sql, args)
        db.commit()
    except sqlite3.IntegrityError:
        pass
    finally:
        db.close()


def _row(path: Path) -> dict:
    db = sqlite3.connect(path)
    try:
        cols = [r[1] for r in db.execute("PRAGMA table_info(cells)")]
        return dict(zip(cols, db.execute("SELECT * FROM cells").fetchone(), strict=True))
    finally:
        db.close()


def mutate(rng: random.Random, store: Path, outside: Path) -> str:
    """Damage the copy at ``store`` one random way; returns what was done."""
    files = Path(str(store) + ".d")
    row = _row(store)
    kind = rng.choice(["json", "json", "json", "column", "column", "path", "path", "bytes",
                       "outcome", "series", "weights_file"])
    if kind == "json":
        col = rng.choice(JSON_COLUMNS)
        value = _mutate_json(rng, json.loads(row[col]))
        text = json.dumps(value) if rng.random() < 0.9 else json.dumps(value)[: rng.randrange(1, 40)]
        _sql(store, f"UPDATE cells SET {col} = ?", (text,))
    elif kind == "column":
        col = rng.choice(["cell_id", "spec", "status", "diverged", "weights", "sha256", *JSON_COLUMNS])
        value = rng.choice([None, 5, 2.5, b"\xff\xfe\x00", "x" * 100_000, "a\x00b", "[" * 100_000,
                            '{"a": ' * 40 + "1" + "}" * 40, "[" * 5000 + "]" * 5000,
                            rng.choice(NASTY_TEXT)])
        _sql(store, f"UPDATE cells SET {col} = ?", (value,))
        return f"column {col} = {str(value)[:30]!r}"
    elif kind == "path":
        rel = os.path.relpath(outside / "w.safetensors", files)
        link = files / "weights" / "link.safetensors"
        target = rng.choice([outside / "w.safetensors", outside, Path("/etc/passwd")])
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
        path = rng.choice([rel, str(outside / "w.safetensors"), "weights/link.safetensors",
                           "../../../../../etc/passwd", "/etc/passwd", "weights", ".", "",
                           "weights/../weights/" + Path(row["weights"]).name])
        digest = rng.choice([row["sha256"], (outside / "w.sha256").read_text()])
        _sql(store, "UPDATE cells SET weights = ?, sha256 = ?", (path, digest))
        return f"path {path!r}"
    elif kind == "bytes":
        data = bytearray(store.read_bytes())
        for _ in range(rng.choice([1, 1, 2, 8, 64])):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        store.write_bytes(bytes(data))
    elif kind == "outcome":
        good = {"name": "o", "tables": {"t": [{"a": 1.0}]}, "claims": [
            {"text": "c", "measured": "m", "verdict": "held", "test": "t"}], "data": {}, "figures": {}}
        value = _mutate_json(rng, good)
        text = json.dumps(value) if rng.random() < 0.9 else json.dumps(value)[:20]
        _sql(store, "INSERT OR REPLACE INTO outcomes VALUES (?, ?, 1.0)",
             (rng.choice(["o", "a\nb", "x" * 600, "a\x00b"]), text))
    elif kind == "series":
        _sql(store, "INSERT OR REPLACE INTO series VALUES (?, ?, ?, ?)",
             (row["cell_id"], rng.choice(["train_objective", "x" * 3000, "a\x00b"]),
              rng.choice([0, -5, 2**62, "a", 1.5, None]), rng.choice([1.0, "v", b"\x00", None])))
    else:
        w = files / row["weights"]
        choice = rng.randrange(4)
        w.unlink()
        if choice == 0:
            w.mkdir()
        elif choice == 1:
            os.mkfifo(w)
        elif choice == 2:
            w.write_bytes(bytes(rng.randrange(256) for _ in range(rng.choice([0, 10, 5000]))))
        else:
            w.symlink_to(outside / "w.safetensors")
    return kind


# -- the worker (a subprocess) -------------------------------------------------------------------

def worker(base: Path, work: Path, n: int, seed: int) -> dict:
    import resource
    import signal
    import traceback

    from click.testing import CliRunner

    from resdyn.cli.main import main

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    outside = base.parent / "outside"
    watched = (str(outside.resolve()), "/etc/passwd")
    reads: list[str] = []

    def audit(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            target = os.path.realpath(os.fsdecode(args[0])) if not isinstance(args[0], int) else ""
            if target.startswith(watched):
                reads.append(target)

    sys.addaudithook(audit)

    def hang(signum, frame):
        raise TimeoutError("command ran past its limit")

    signal.signal(signal.SIGALRM, hang)
    runner = CliRunner()
    cell_id = json.loads((base.parent / "cell.json").read_text())
    failures, exits, kinds = [], {}, {}
    for i in range(n):
        rng = random.Random(seed * 100_003 + i)
        folder = work / f"s{i % 4}"  # four folders reused: nothing accumulates
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        store = folder / "s.sqlite"
        shutil.copy(base, store)
        shutil.copytree(Path(str(base) + ".d"), Path(str(store) + ".d"), symlinks=True)
        kind = mutate(rng, store, outside)
        kinds[kind.split()[0]] = kinds.get(kind.split()[0], 0) + 1
        for args in (["results", str(store)], ["status", str(store), "--verify"],
                     ["bound", str(store), cell_id], ["report", str(store), "--out", str(folder / "out")]):
            before = len(reads)
            signal.alarm(COMMAND_SECONDS)
            try:
                res = runner.invoke(main, args)
            finally:
                signal.alarm(0)
            exits[res.exit_code] = exits.get(res.exit_code, 0) + 1
            problem = None
            if res.exception is not None and not isinstance(res.exception, SystemExit):
                problem = "".join(traceback.format_exception(res.exception))[-1500:]
            elif "Traceback" in res.output:
                problem = res.output[-1500:]
            elif "error:" in res.output and len(res.output.strip().splitlines()) != 1:
                problem = f"an error that is not one line: {res.output[-600:]}"
            elif len(reads) > before:
                problem = f"read outside the store: {reads[before:]}"
            if problem is not None:
                failures.append({"store": i, "mutation": kind, "command": args[0], "problem": problem})
    return {"stores": n, "failures": failures[:20], "n_failures": len(failures), "exits": exits,
            "kinds": kinds}


# -- the test ------------------------------------------------------------------------------------

def _base_store(tmp: Path) -> Path:
    """One trained cell, an outcome and a genuine weights file (with its sha256) outside it."""
    from resdyn.sweeps import Store, expand, parse_spec
    from resdyn.sweeps.runner import train_group

    spec = parse_spec({"name": "f", "data": {"name": "two_spirals"},
                       "model": {"family": "resnet", "width": 4, "depth": 2},
                       "train": {"steps": 5, "lr": 1e-2}, "sweep": {"sample_size": [16]}})
    (result,) = train_group(expand(spec))
    base = tmp / "base" / "s.sqlite"
    base.parent.mkdir()
    with Store(base) as st:
        st.write(spec.name, result)
        st.save_outcome("o", {"name": "o", "tables": {"t": [{"a": 1.0}]}, "claims": [], "data": {},
                              "figures": {}})
        wfile = st.weights_path(result.cell_id)
        digest = st.rows()[0]["sha256"]
    outside = tmp / "base" / "outside"
    outside.mkdir()
    shutil.copy(wfile, outside / "w.safetensors")
    (outside / "w.sha256").write_text(digest)
    (tmp / "base" / "cell.json").write_text(json.dumps(result.cell_id))
    return base


def test_fuzz_a_thousand_mutated_stores_through_every_reading_command(tmp_path):
    base = _base_store(tmp_path)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, str(base), str(tmp_path / "work"),
                           str(N_STORES), str(SEED)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["stores"] == N_STORES >= 1000
    assert summary["n_failures"] == 0, json.dumps(summary["failures"][:5], indent=1)
    # The mutations reached both outcomes: stores still readable and stores refused.
    assert summary["exits"].get("0", 0) > 100 and summary["exits"].get("1", 0) > 100, summary
    assert set(summary["kinds"]) == {"json", "column", "path", "bytes", "outcome", "series",
                                     "weights_file"}, summary
    # Nothing was written outside the work folders and the planted files are unchanged.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "work"]
    print(f"fuzz: {N_STORES} stores in {time.monotonic() - t0:.0f} s: {summary['exits']}")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        pytest.exit("usage: test_hardening_fuzz.py BASE WORK N SEED")
    print(json.dumps(worker(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
