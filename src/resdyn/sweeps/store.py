"""The results store: one SQLite file, one row per finished cell, weights beside it.

Layout: ``PATH`` (SQLite, WAL) and ``PATH.d/`` with ``weights/<cell>.safetensors`` (trained
parameters) and ``checkpoints/<cell>.safetensors`` (training state of unfinished cells).

Guarantees:

* a row is written in one transaction, after its weights file is complete (written beside its
  target and renamed), so a row never points to a partial file;
* ``INSERT OR IGNORE`` on the cell id: two runs that finish the same cell keep one row;
* a run claims cells with a lease (owner, expiry) before training them; a live lease keeps other
  runs off the cell; an expired one, or one whose holder was a process on this host that no
  longer exists (killed, say), is taken over;
* the busy timeout makes concurrent writers wait instead of failing.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["CellResult", "Store", "StoreError", "check_store_path", "provenance"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    metrics TEXT NOT NULL,
    measures TEXT NOT NULL,
    diverged INTEGER NOT NULL,
    diverged_step INTEGER NOT NULL,
    weights TEXT,
    timing TEXT NOT NULL,
    provenance TEXT NOT NULL,
    finished_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    cell_id TEXT NOT NULL,
    name TEXT NOT NULL,
    step INTEGER NOT NULL,
    value REAL,
    PRIMARY KEY (cell_id, name, step)
);
CREATE TABLE IF NOT EXISTS outcomes (
    name TEXT PRIMARY KEY,
    outcome TEXT NOT NULL,
    finished_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    cell_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires REAL NOT NULL
);
"""


class StoreError(RuntimeError):
    """A store that cannot be opened or written; the message names the path."""


@dataclass
class CellResult:
    """What training a cell produced: per-cell numbers, series, weights and timing."""

    cell_id: str
    config: dict[str, Any]
    metrics: dict[str, float]
    measures: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        return bool(self.metrics.get("diverged", 0))


def check_store_path(path: str | Path) -> Path:
    """Raise :class:`StoreError` unless a store can be created or opened at ``path``; creates
    nothing."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise StoreError(f"store path {path} exists and is not a file")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise StoreError(f"store path {path} is not writable: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"store path {path} is not writable: no write permission on {parent}")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"store {path} is not readable and writable")
    return path


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(dtype: str, device: str) -> dict[str, Any]:
    """Library, git commit, torch version, dtype, device, threads, host: what made the numbers."""
    from .. import __version__

    return {
        "resdyn": __version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dtype": dtype,
        "device": device,
        "threads": torch.get_num_threads(),
        "host": platform.node(),
    }


class Store:
    """An open store; see the module docstring. ``Store(path, create=False)`` opens an existing
    one only."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = check_store_path(path)
        if not create and not self.path.is_file():
            raise StoreError(f"no store at {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.files = Path(str(self.path) + ".d")
        try:
            self.db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self.db.execute("PRAGMA busy_timeout = 60000")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            raise StoreError(f"cannot open store {self.path}: {err}") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paths -------------------------------------------------------------------------------
    def weights_path(self, cell_id: str) -> Path:
        return self.files / "weights" / f"{cell_id}.safetensors"

    def checkpoint_path(self, cell_id: str) -> Path:
        return self.files / "checkpoints" / f"{cell_id}.safetensors"

    # -- reading ------------------------------------------------------------------------------
    def done_ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT cell_id FROM cells")}

    def rows(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM cells ORDER BY finished_at, cell_id")
        names = [d[0] for d in cur.description]
        out = []
        for r in cur.fetchall():
            row = dict(zip(names, r, strict=True))
            for k in ("config", "metrics", "measures", "timing", "provenance"):
                row[k] = json.loads(row[k])
            out.append(row)
        return out

    def rows_with_series(self) -> list[dict[str, Any]]:
        """:meth:`rows`, each with its series as ``row['series'] = {name: {step: value}}`` (a
        value the store kept as NULL, not finite, comes back as NaN)."""
        rows = self.rows()
        by_cell: dict[str, dict[str, dict[int, float]]] = {r["cell_id"]: {} for r in rows}
        for cid, name, step, value in self.series():
            if cid in by_cell:
                by_cell[cid].setdefault(name, {})[int(step)] = float("nan") if value is None else value
        for r in rows:
            r["series"] = by_cell[r["cell_id"]]
        return rows

    def series(self, cell_id: str | None = None) -> list[tuple[str, str, int, float]]:
        q = "SELECT cell_id, name, step, value FROM series"
        args: tuple = ()
        if cell_id is not None:
            q, args = q + " WHERE cell_id = ?", (cell_id,)
        return list(self.db.execute(q + " ORDER BY cell_id, name, step", args))

    def leases(self) -> list[tuple[str, str, float]]:
        return list(self.db.execute("SELECT cell_id, owner, expires FROM leases"))

    # -- leases -------------------------------------------------------------------------------
    @staticmethod
    def new_owner() -> str:
        """A lease owner id: host, process id and a random part (``host:pid:hex``)."""
        return f"{platform.node()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

    @staticmethod
    def _owner_dead(owner: str) -> bool:
        """True when ``owner`` was a process on this host that is gone."""
        host, _, rest = owner.partition(":")
        pid = rest.partition(":")[0]
        if host != platform.node() or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def claim(self, cell_ids: Sequence[str], owner: str, seconds: float) -> list[str]:
        """Claim the cells that are neither done nor held by a live lease of another owner."""
        now = time.time()
        claimed = []
        with self._transaction():
            self.db.execute("DELETE FROM leases WHERE expires < ?", (now,))
            done = self.done_ids()
            held = {r[0]: r[1] for r in self.db.execute("SELECT cell_id, owner FROM leases")}
            dead = {o for o in set(held.values()) if o != owner and self._owner_dead(o)}
            held = {c: o for c, o in held.items() if o not in dead}
            for cid in cell_ids:
                if cid in done or held.get(cid, owner) != owner:
                    continue
                self.db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)",
                                (cid, owner, now + seconds))
                claimed.append(cid)
        return claimed

    def renew(self, owner: str, seconds: float) -> None:
        with self._transaction():
            self.db.execute("UPDATE leases SET expires = ? WHERE owner = ?",
                            (time.time() + seconds, owner))

    def release(self, owner: str) -> None:
        with self._transaction():
            self.db.execute("DELETE FROM leases WHERE owner = ?", (owner,))

    # -- writing ------------------------------------------------------------------------------
    def write(self, spec_name: str, result: CellResult, owner: str | None = None) -> bool:
        """Weights first (atomic file), then the row, its series and the lease release in one
        transaction. Returns False when the cell already had a row (nothing is changed then)."""
        from ..models.io import save_params
        from ..models.registry import build_model

        wpath = self.weights_path(result.cell_id)
        if result.weights:
            model = build_model(**result.config["model"])
            save_params(wpath, model, result.weights, {"cell_id": result.cell_id,
                                                       "config": result.config})
        status = "diverged" if result.diverged else "done"
        with self._transaction():
            cur = self.db.execute(
                "INSERT OR IGNORE INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (result.cell_id, spec_name, status, json.dumps(result.config, sort_keys=True),
                 json.dumps(result.metrics, sort_keys=True),
                 json.dumps(result.measures, sort_keys=True), int(result.diverged),
                 int(result.metrics.get("diverged_step", -1)),
                 str(wpath.relative_to(self.files)) if result.weights else None,
                 json.dumps(result.timing), json.dumps(result.provenance), time.time()),
            )
            inserted = cur.rowcount == 1
            if inserted:
                self.db.executemany(
                    "INSERT OR IGNORE INTO series VALUES (?, ?, ?, ?)",
                    [(result.cell_id, name, int(s), _finite_or_none(v))
                     for name, pts in result.series.items() for s, v in pts],
                )
            if owner is not None:
                self.db.execute("DELETE FROM leases WHERE cell_id = ? AND owner = ?",
                                (result.cell_id, owner))
        self.checkpoint_path(result.cell_id).unlink(missing_ok=True)
        return inserted

    def _transaction(self) -> _Tx:
        return _Tx(self.db)

    # -- outcomes of experiments that are not sweeps ------------------------------------------
    def save_outcome(self, name: str, outcome: dict[str, Any]) -> None:
        """Keep a finished experiment's outcome (JSON-able, figures as base64 PNG) under ``name``."""
        with self._transaction():
            self.db.execute("INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?)",
                            (name, json.dumps(outcome, sort_keys=True), time.time()))

    def outcomes(self) -> dict[str, dict[str, Any]]:
        return {n: json.loads(o) for n, o in
                self.db.execute("SELECT name, outcome FROM outcomes ORDER BY name")}

    # -- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, cell_id: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        path = self.checkpoint_path(cell_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        step = str(int(tensors["step"][0]))
        save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta), "step": step})
        os.replace(tmp, path)

    def load_checkpoint(self, cell_id: str) -> tuple[dict[str, torch.Tensor], dict] | None:
        from safetensors import safe_open

        path = self.checkpoint_path(cell_id)
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        return load_file(str(path)), meta

    def checkpoint_steps(self, cell_ids: Iterable[str]) -> dict[str, int]:
        """The step each cell's checkpoint was taken at (from the file header only)."""
        from safetensors import safe_open

        out = {}
        for cid in cell_ids:
            path = self.checkpoint_path(cid)
            if path.is_file():
                with safe_open(str(path), framework="pt") as f:
                    out[cid] = int((f.metadata() or {})["step"])
        return out


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): takes the write lock up front."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _finite_or_none(v: float) -> float | None:
    v = float(v)
    return v if v == v and abs(v) != float("inf") else None
