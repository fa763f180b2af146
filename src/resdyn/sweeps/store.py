"""The results store: one SQLite file, one row per finished cell, weights beside it.

Layout: ``PATH`` (SQLite, WAL) and ``PATH.d/`` with ``weights/<cell>.safetensors`` (trained
parameters) and ``checkpoints/<cell>.safetensors`` (training state of unfinished cells).

Guarantees:

* a row is written in one transaction, after its weights file is complete, so a row never points
  to a partial file; the row records the file's sha256 (``resdyn status --verify`` checks it);
* ``INSERT OR IGNORE`` on the cell id: two runs that finish the same cell keep one row. Each
  finisher writes its weights under a cell- and process-unique temporary name; only the one whose
  insert won moves its file into place (inside the transaction), the other deletes its file, so
  the row and the weights file always come from the same finisher;
* a run claims cells with a lease (owner, expiry) before training them; a live lease keeps other
  runs off the cell; an expired one, or one whose holder was a process on this host that no
  longer exists (killed, say), is taken over;
* the busy timeout makes concurrent writers wait instead of failing;
* a checkpoint carries the sha256 of its contents; a damaged one is named in a warning, set aside
  under ``checkpoints/damaged/`` and its cell restarts from scratch;
* temporary files of runs that died (their process on this host is gone) are removed on open;
* a store that is damaged (SQLite's ``quick_check``), empty (0 bytes), foreign (no resdyn
  schema) or holds undecodable rows raises one :class:`StoreError` naming the file and the fault;
  a row whose columns do not have the shape resdyn writes (:func:`check_row`: JSON that is not
  an object, nested deeper than :data:`MAX_JSON_DEPTH`, a spec name that is not a plain name, a
  metric that is not a number) raises one naming the store, the row and ``resdyn status
  --verify``; a store that cannot be written (read-only file or folder) is opened read-only;
* rows come back typed through :meth:`Store.records`: the config decoded into a
  :class:`~resdyn.sweeps.cells.Cell` by the one codec (a config that does not decode is a
  :class:`StoreError` naming the row);
* weights are read only through :meth:`Store.load_weights`: the record's path must resolve inside
  ``PATH.d/`` to a regular file whose sha256 is the row's, and the file must describe the
  record's model with tensors of its shapes; anything else is a :class:`StoreError`;
* a checkpoint path that is not a regular file (a directory, a link, a FIFO) is set aside like a
  damaged checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sqlite3
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .._paths import NAME_MAX, PathEscapeError, check_name, inside
from .cells import Cell, CellDecodeError
from .records import CellRecord, record_from_row

__all__ = ["MAX_JSON_DEPTH", "CellRecord", "CellResult", "Store", "StoreError", "check_outcome", "check_row",
           "check_store_path", "provenance"]

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
    finished_at REAL NOT NULL,
    sha256 TEXT
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


COLUMNS = ("cell_id", "spec", "status", "config", "metrics", "measures", "diverged",
           "diverged_step", "weights", "timing", "provenance", "finished_at", "sha256")
_REQUIRED = {"cells": set(COLUMNS[:-1]), "series": {"cell_id", "name", "step", "value"},
             "outcomes": {"name", "outcome", "finished_at"}, "leases": {"cell_id", "owner", "expires"}}
_JSON_COLUMNS = ("config", "metrics", "measures", "timing", "provenance")
_HOST_TAG = hashlib.sha256(platform.node().encode()).hexdigest()[:8]
# Temporary files this module writes carry "<host tag>-<pid>-" so a later open can tell whether
# their writer is gone; the older names "<cell>.<pid>.tmp" and mkstemp's ".<name>.XXXX.tmp" too.
_TMP_OWNED = re.compile(r"\.([0-9a-f]{8})-(\d+)-[0-9a-f]+\.")
_TMP_OLD_PID = re.compile(r"^[0-9a-f]+\.(\d+)\.tmp$")
_TMP_AGE = 24 * 3600.0
#: Deepest nesting of lists and objects read from a stored JSON column (resdyn writes 3 or 4).
MAX_JSON_DEPTH = 32
_NUMBER = (int, float)
#: Tensor sets a weights file may hold beside the cell's parameters, each under the names
#: ``SET/PARAMETER``: a certificate cell's prior mean m and whitened posterior mean u.
EXTRAS = ("prior_mean", "posterior_u", "baseline_u")


class StoreError(RuntimeError):
    """A store that cannot be opened, read or written; the message names the path and the fault."""


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def _pid_dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


@dataclass
class CellResult:
    """What training a cell produced: per-cell numbers, series, weights and timing.

    ``cell``: the typed cell (its model writes the weights file, its stored form the row's
    config). ``extras``: further
    tensor sets of the model's shapes kept in the same weights file (so under the same sha256),
    by name (one of :data:`EXTRAS`: a certificate's prior mean and whitened posterior), each one
    model with no model axis; read back with :meth:`Store.load_extras`."""

    cell_id: str
    cell: Cell
    metrics: dict[str, float]
    measures: dict[str, float] = field(default_factory=dict)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        """The config JSON the row keeps: the cell's stored form."""
        return self.cell.config

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


def _git_dirty(package: Path | None = None) -> bool | None:
    """Whether the package's own files (``src/resdyn``, shipped specs included) differ from the
    commit ``_git_commit`` names, untracked files counted; None outside a git checkout. A run
    from uncommitted code then says so instead of naming a commit it did not run."""
    package = package or Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal", "--", "."],
                             cwd=package, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def provenance(dtype: str, device: str) -> dict[str, Any]:
    """Library, git commit (and whether the package's files differ from it), torch version, dtype,
    device, threads, host: what made the numbers."""
    from ..version import __version__

    return {
        "resdyn": __version__,
        "git_commit": _git_commit(),
        "git_dirty": _git_dirty(),
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

    def __init__(self, path: str | Path, create: bool = True, readonly: bool | None = None):
        """``create``: make the store if absent. ``readonly``: open for reading only (SQLite
        ``mode=ro``); by default a store opened with ``create=False`` that this process cannot
        write (a read-only file or folder) is opened read-only."""
        path = Path(path)
        self.files = Path(str(path) + ".d")
        if not create:
            if path.exists() and not path.is_file():
                raise StoreError(f"store path {path} exists and is not a file")
            if not path.is_file():
                raise StoreError(f"no store at {path}")
            if readonly is None:
                readonly = not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK))
            _wait_nonempty(path)
        self.readonly = bool(readonly)
        self.path = path if self.readonly else check_store_path(path)
        try:
            if self.readonly:
                self.db = _connect_readonly(self.path)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
                self.db.execute("PRAGMA busy_timeout = 60000")
            self._check()  # before anything is written: a foreign or damaged file stays as it was
            if not self.readonly:
                _enable_wal(self.db)
                self.db.executescript(SCHEMA)
                self._migrate()
        except sqlite3.DatabaseError as err:
            self._close_quietly()
            raise StoreError(f"store {self.path} cannot be opened ({_one_line(str(err))}); it is "
                             f"damaged or not a resdyn store: see `resdyn status --verify "
                             f"{self.path}`") from None
        except StoreError:
            self._close_quietly()
            raise
        if not self.readonly:
            self.remove_orphans()

    def _close_quietly(self) -> None:
        db = getattr(self, "db", None)
        if db is not None:
            db.close()

    def _check(self) -> None:
        """SQLite's quick check, then the resdyn schema (a foreign database is refused)."""
        problems = [r[0] for r in self.db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            more = f" and {len(problems) - 1} more problems" if len(problems) > 1 else ""
            raise StoreError(f"store {self.path} is damaged (SQLite quick_check: "
                             f"{_one_line(str(problems[0]))}{more}); see `resdyn status --verify "
                             f"{self.path}`, restore it from a copy or start a new store")
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return
        for table, need in _REQUIRED.items():
            if table not in tables:
                continue
            have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if not need <= have:
                raise StoreError(f"store {self.path} is not a resdyn store: table {table!r} lacks "
                                 f"column(s) {', '.join(sorted(need - have))}")
        if "cells" not in tables:
            raise StoreError(f"store {self.path} is not a resdyn store: it has tables "
                             f"{_one_line(', '.join(sorted(map(str, tables))))} but no 'cells' table")

    def _migrate(self) -> None:
        """Stores written before rows carried the weights' sha256 get the column (NULL for old
        rows): old stores stay readable and writable."""
        have = {r[1] for r in self.db.execute("PRAGMA table_info(cells)")}
        if "sha256" not in have:
            with self._transaction():
                have = {r[1] for r in self.db.execute("PRAGMA table_info(cells)")}
                if "sha256" not in have:
                    self.db.execute("ALTER TABLE cells ADD COLUMN sha256 TEXT")

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Run a read; a damaged file or undecodable text becomes a :class:`StoreError` (naming
        the row and column of text that is not UTF-8)."""
        try:
            return self.db.execute(sql, args).fetchall()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as err:
            where = self._undecodable() if "decode" in str(err).lower() else None
            fault = where or f"{type(err).__name__}: {_one_line(str(err))}"
            raise StoreError(f"store {self.path} cannot be read ({fault}); it is damaged: see "
                             f"`resdyn status --verify {self.path}`, restore it from a copy or "
                             "start a new store") from None

    def _undecodable(self) -> str | None:
        """'row R column C': the first cell of the ``cells`` table whose text is not UTF-8."""
        try:
            have = [r[1] for r in self.db.execute("PRAGMA table_info(cells)")]
            blobs = ", ".join(f"CAST({c} AS BLOB)" for c in have)
            for values in self.db.execute(f"SELECT {blobs} FROM cells"):
                cid = values[0].decode("utf-8", "replace") if isinstance(values[0], bytes) else values[0]
                for col, v in zip(have, values, strict=True):
                    if isinstance(v, bytes):
                        try:
                            v.decode("utf-8")
                        except UnicodeDecodeError:
                            return f"row {_shown(cid)} column {col!r} is not UTF-8 text"
        except (sqlite3.DatabaseError, UnicodeDecodeError):
            return None
        return None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paths -------------------------------------------------------------------------------
    def weights_path(self, cell_id: str) -> Path:
        return self.files / "weights" / f"{check_name('cell id', cell_id)}.safetensors"

    def checkpoint_path(self, cell_id: str) -> Path:
        return self.files / "checkpoints" / f"{check_name('cell id', cell_id)}.safetensors"

    @staticmethod
    def _tmp_tag() -> str:
        """``<host tag>-<pid>-<random>``: unique to one writer, and tells a later open whether
        the writer is gone."""
        return f"{_HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def remove_orphans(self) -> list[Path]:
        """Delete temporary files whose writer was a process on this host that no longer exists
        (and nameless old ones over a day old). Returns what was removed."""
        removed = []
        now = time.time()
        for folder in (self.files / "weights", self.files / "checkpoints"):
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                if not p.is_file() or not (p.name.endswith(".tmp") or ".pending" in p.name):
                    continue
                m, old = _TMP_OWNED.search(p.name), _TMP_OLD_PID.match(p.name)
                if m is not None:
                    dead = m.group(1) == _HOST_TAG and _pid_dead(int(m.group(2)))
                elif old is not None:
                    dead = _pid_dead(int(old.group(1)))
                else:
                    try:
                        dead = now - p.stat().st_mtime > _TMP_AGE
                    except OSError:
                        continue
                if dead:
                    p.unlink(missing_ok=True)
                    removed.append(p)
        return removed

    # -- reading ------------------------------------------------------------------------------
    def done_ids(self) -> set[str]:
        return {r[0] for r in self._query("SELECT cell_id FROM cells")}

    def rows(self) -> list[dict[str, Any]]:
        """Every finished cell as a dict of the ``cells`` columns, JSON columns decoded (the raw
        view, checked by :func:`check_row`; the analyses read :meth:`records`); ``sha256`` is
        None for rows of stores written before it was recorded."""
        have = [r[1] for r in self._query("PRAGMA table_info(cells)")]
        cols = [c for c in COLUMNS if c in have]
        out = []
        for r in self._query(f"SELECT {', '.join(cols)} FROM cells ORDER BY finished_at, cell_id"):
            row = dict(zip(cols, r, strict=True))
            row.setdefault("sha256", None)
            where = f"row {_shown(row['cell_id'])}"
            for k in _JSON_COLUMNS:
                row[k] = self._decode(row[k], f"{where} column {k!r}")
            fault = check_row(row)
            if fault is not None:
                raise self._damaged(where, fault)
            out.append(row)
        return out

    def records(self, series: bool = False, ids: Iterable[str] | None = None) -> list[CellRecord]:
        """Every finished cell (``ids``: those of them) as a typed
        :class:`~resdyn.sweeps.records.CellRecord`, its config decoded into a
        :class:`~resdyn.sweeps.cells.Cell`; ``series``: with each cell's series (see
        :meth:`rows_with_series`). A row whose config does not decode is a :class:`StoreError`
        naming the row and the fault."""
        rows = self.rows_with_series() if series else self.rows()
        if ids is not None:
            wanted = set(ids)
            rows = [r for r in rows if r["cell_id"] in wanted]
        out = []
        for row in rows:
            try:
                out.append(record_from_row(row))
            except CellDecodeError as err:
                raise self._damaged(f"row {_shown(row['cell_id'])}", str(err)) from None
        return out

    def _damaged(self, where: str, fault: str) -> StoreError:
        """The one error of a damaged row or outcome: the store, the row, what is wrong."""
        return StoreError(f"store {self.path}: {where}: {_one_line(fault, 400)}; the store is "
                          "damaged: see "
                          f"`resdyn status --verify {self.path}`, restore it from a copy or start "
                          "a new store")

    def _decode(self, text: Any, where: str) -> Any:
        if not isinstance(text, str):
            raise self._damaged(where, f"is not valid JSON (a {type(text).__name__}, not text)")
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as err:
            what = "nested too deeply" if isinstance(err, RecursionError) else str(err)[:200]
            raise self._damaged(where, f"is not valid JSON ({what})") from None
        if _depth(value) > MAX_JSON_DEPTH:
            raise self._damaged(where, f"is JSON nested deeper than {MAX_JSON_DEPTH} levels")
        return value

    def rows_with_series(self) -> list[dict[str, Any]]:
        """:meth:`rows`, each with its series as ``row['series'] = {name: {step: value}}`` (a
        value the store kept as NULL, not finite, comes back as NaN)."""
        rows = self.rows()
        by_cell: dict[str, dict[str, dict[int, float]]] = {r["cell_id"]: {} for r in rows}
        for cid, name, step, value in self.series():
            if cid not in by_cell:
                continue
            if (not isinstance(name, str) or len(name) > 4 * NAME_MAX or not isinstance(step, int)
                    or not (value is None or isinstance(value, _NUMBER))):
                raise self._damaged(f"row {_shown(cid)} series {_shown(name)}",
                                    f"a point ({_shown(step)}, {_shown(value)}) is not "
                                    "(integer step, number)")
            by_cell[cid].setdefault(name, {})[step] = float("nan") if value is None else value
        for r in rows:
            r["series"] = by_cell[r["cell_id"]]
        return rows

    def series(self, cell_id: str | None = None) -> list[tuple[str, str, int, float]]:
        q = "SELECT cell_id, name, step, value FROM series"
        args: tuple = ()
        if cell_id is not None:
            q, args = q + " WHERE cell_id = ?", (cell_id,)
        return self._query(q + " ORDER BY cell_id, name, step", args)

    def leases(self) -> list[tuple[str, str, float]]:
        return self._query("SELECT cell_id, owner, expires FROM leases")

    def verify(self) -> list[tuple[str, str]]:
        """(cell id, state) for every row with weights: 'ok', 'missing', 'damaged (sha256 X,
        expected Y)', or 'unrecorded' (a row written before sha256 was recorded)."""
        out = []
        for cid, rel, want in self._query("SELECT cell_id, weights, sha256 FROM cells "
                                          "WHERE weights IS NOT NULL ORDER BY cell_id"
                                          if self._has_sha() else
                                          "SELECT cell_id, weights, NULL FROM cells "
                                          "WHERE weights IS NOT NULL ORDER BY cell_id"):
            try:
                path = inside(self.files, rel)
            except (PathEscapeError, TypeError, ValueError, OSError):
                out.append((cid, f"damaged (weights path {_shown(rel)} is outside {self.files})"))
                continue
            if not _regular_file(path):
                out.append((cid, f"missing ({path})"))
            elif want is None:
                out.append((cid, "unrecorded (no sha256 in the row)"))
            else:
                got = sha256_file(path)
                out.append((cid, "ok" if got == want else
                            f"damaged ({path}: sha256 {got}, expected {want})"))
        return out

    def _has_sha(self) -> bool:
        return "sha256" in {r[1] for r in self._query("PRAGMA table_info(cells)")}

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

        wpath = self.weights_path(result.cell_id)
        pending, digest = None, None
        if result.weights:
            # Cell- and writer-unique: a second finisher (a lapsed lease) cannot overwrite the
            # kept row's weights; only the finisher whose insert wins moves its file into place.
            pending = wpath.with_name(f".{result.cell_id}.{self._tmp_tag()}.pending")
            unknown = sorted(set(result.extras) - set(EXTRAS))
            if unknown:
                raise ValueError(f"result {result.cell_id}: unknown extra tensor sets {unknown}; "
                                 f"allowed: {', '.join(EXTRAS)}")
            tensors = {**result.weights, **{f"{name}/{k}": v for name, ts in result.extras.items()
                                            for k, v in ts.items()}}
            save_params(pending, result.cell.model, tensors,
                        {"cell_id": result.cell_id, "config": result.config})
            digest = sha256_file(pending)
        status = "diverged" if result.diverged else "done"
        try:
            with self._transaction():
                cur = self.db.execute(
                    f"INSERT OR IGNORE INTO cells ({', '.join(COLUMNS)}) VALUES "
                    f"({', '.join('?' * len(COLUMNS))})",
                    (result.cell_id, spec_name, status, json.dumps(result.config, sort_keys=True),
                     json.dumps(result.metrics, sort_keys=True),
                     json.dumps(result.measures, sort_keys=True), int(result.diverged),
                     int(result.metrics.get("diverged_step", -1)),
                     str(wpath.relative_to(self.files)) if result.weights else None,
                     json.dumps(result.timing), json.dumps(result.provenance), time.time(), digest),
                )
                inserted = cur.rowcount == 1
                if inserted:
                    self.db.executemany(
                        "INSERT OR IGNORE INTO series VALUES (?, ?, ?, ?)",
                        [(result.cell_id, name, int(s), _finite_or_none(v))
                         for name, pts in result.series.items() for s, v in pts],
                    )
                    if pending is not None:
                        # Before COMMIT: a crash in between leaves a file without a row (the
                        # cell reruns), never a row without its file.
                        os.replace(pending, wpath)
                if owner is not None:
                    self.db.execute("DELETE FROM leases WHERE cell_id = ? AND owner = ?",
                                    (result.cell_id, owner))
        finally:
            if pending is not None:
                pending.unlink(missing_ok=True)
        self.discard_checkpoint(result.cell_id)
        return inserted

    def _transaction(self) -> _Tx:
        return _Tx(self.db, self.path)

    # -- outcomes of experiments that are not sweeps ------------------------------------------
    def save_outcome(self, name: str, outcome: dict[str, Any]) -> None:
        """Keep a finished experiment's outcome (JSON-able, figures as base64 PNG) under ``name``."""
        with self._transaction():
            self.db.execute("INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?)",
                            (name, json.dumps(outcome, sort_keys=True), time.time()))

    def outcomes(self) -> dict[str, dict[str, Any]]:
        """Stored outcomes by name, each a JSON object (see :func:`check_outcome`)."""
        if "outcomes" not in {r[0] for r in self._query("SELECT name FROM sqlite_master")}:
            return {}
        out = {}
        for n, o in self._query("SELECT name, outcome FROM outcomes ORDER BY name"):
            where = f"outcome {_shown(n)}"
            value = self._decode(o, where)
            fault = check_outcome(value)
            if not isinstance(n, str) or not 1 <= len(n) <= 4 * NAME_MAX or "\0" in n:
                fault = f"its name is not 1-{4 * NAME_MAX} characters without NUL"
            if fault is not None:
                raise self._damaged(where, fault)
            out[n] = value
        return out

    # -- weights ------------------------------------------------------------------------------
    def weights_file(self, record: CellRecord) -> Path:
        """The regular file inside this store's folder that ``record``'s weights path names;
        :class:`StoreError` when it has none, it leads outside (``..``, an absolute path, a
        symlink) or there is no such file."""
        cid, rel = _shown(record.cell_id), record.weights
        if not rel:
            raise StoreError(f"store {self.path}: row {cid} has no weights file (it was stored "
                             "without trained parameters)")
        try:
            if not isinstance(rel, str) or "\0" in rel:
                raise TypeError("not a plain string")
            path = inside(self.files, rel)
        except (PathEscapeError, TypeError, ValueError, OSError):
            raise self._damaged(f"row {cid}", f"its weights path {_shown(rel)} is outside the "
                                f"store's folder {self.files}") from None
        if not _regular_file(path):
            raise StoreError(f"store {self.path}: the weights of row {cid} are missing: no regular "
                             f"file {path}; see `resdyn status --verify {self.path}`")
        return path

    def load_weights(self, record: CellRecord, device: str | torch.device = "cpu"
                     ) -> tuple[Any, dict[str, torch.Tensor]]:
        """The model (the record's decoded cell's) and parameters (as written: one model, no
        model axis) of ``record``: the one way resdyn reads stored weights. The file is
        :meth:`weights_file`; its bytes are read once, their sha256 checked against the row's,
        and only then parsed; the model the file describes must be the record's, and its tensors
        must have that model's names and shapes."""
        path, model, tensors = self._read_weights(record, device)
        params = {k: v for k, v in tensors.items() if k.split("/", 1)[0] not in EXTRAS}
        fault = _params_fault(model, params, record.cell.model)
        if fault is not None:
            raise self._damaged(f"row {_shown(record.cell_id)}", f"its weights file {path} {fault}")
        return record.cell.model, params

    def load_extras(self, record: CellRecord, name: str, device: str | torch.device = "cpu"
                    ) -> dict[str, torch.Tensor]:
        """The tensor set ``name`` (one of :data:`EXTRAS`) kept in ``record``'s weights file (see
        :class:`CellResult`): read and checked as :meth:`load_weights` reads the parameters (the
        row's sha256; the record's model's names and shapes); one model, no model axis."""
        if name not in EXTRAS:
            raise ValueError(f"unknown extra tensor set {name!r}; allowed: {', '.join(EXTRAS)}")
        path, model, tensors = self._read_weights(record, device)
        found = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{name}/")}
        if not found:
            raise StoreError(f"store {self.path}: the weights file of row {_shown(record.cell_id)} "
                             f"holds no {name!r} tensors (not a certificate cell?)")
        fault = _params_fault(model, found, record.cell.model)
        if fault is not None:
            raise self._damaged(f"row {_shown(record.cell_id)}", f"its weights file {path}, set "
                                f"{name!r}, {fault}")
        return found

    def _read_weights(self, record: CellRecord, device: str | torch.device
                      ) -> tuple[Path, Any, dict[str, torch.Tensor]]:
        """(the file, the model it describes, every tensor in it): read once, its sha256 checked
        against the row's, only then parsed."""
        from ..models.io import CheckpointError, params_from_bytes

        path = self.weights_file(record)
        cid = _shown(record.cell_id)
        if record.cell is None:
            raise self._damaged(f"row {cid}", "it has weights but its config is not a sweep cell's")
        data = path.read_bytes()
        want, got = record.sha256, hashlib.sha256(data).hexdigest()
        if want is not None and got != want:
            raise self._damaged(f"row {cid}", f"its weights file {path} has sha256 {got}, the row "
                                f"records {_shown(want)}")
        try:
            model, params, _ = params_from_bytes(data, str(path), device)
        except CheckpointError as err:
            raise self._damaged(f"row {cid}", str(err)) from None
        return path, model, params

    # -- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, cell_id: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        path = self.checkpoint_path(cell_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._set_aside_irregular(path)
        tmp = path.with_name(f".{cell_id}.{self._tmp_tag()}.tmp")
        head = {"meta": json.dumps(meta), "step": str(int(tensors["step"][0]))}
        head["sha256"] = _checkpoint_digest(tensors, head)
        try:
            save_file(tensors, str(tmp), metadata=head)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, cell_id: str) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The checkpoint's tensors and metadata; None when there is none, or when it is damaged
        (it is then set aside with a warning naming it, and the cell restarts from scratch)."""
        path = self.checkpoint_path(cell_id)
        if self._set_aside_irregular(path) or not path.is_file():
            return None
        try:
            tensors, head = _read_checkpoint(path)
            meta = json.loads(head["meta"])
            if not isinstance(meta, dict):
                raise ValueError(f"its metadata is a {type(meta).__name__}, not a JSON object")
            return tensors, meta
        except Exception as err:  # any fault of an untrusted file means: set it aside
            self._set_aside(path, err)
            return None

    def checkpoint_steps(self, cell_ids: Iterable[str]) -> dict[str, int]:
        """The step each cell's checkpoint was taken at (from the file header only); a damaged
        header sets the file aside (see :meth:`load_checkpoint`)."""
        from safetensors import safe_open

        out = {}
        for cid in cell_ids:
            path = self.checkpoint_path(cid)
            if self._set_aside_irregular(path) or not path.is_file():
                continue
            try:
                with safe_open(str(path), framework="pt") as f:
                    step = int((f.metadata() or {})["step"])
                if step < 0:
                    raise ValueError(f"negative step {step}")
                out[cid] = step
            except Exception as err:  # see load_checkpoint
                self._set_aside(path, err)
        return out

    def discard_checkpoint(self, cell_id: str) -> None:
        """Remove the checkpoint of a finished cell (one that is not a regular file: set aside)."""
        path = self.checkpoint_path(cell_id)
        if not self._set_aside_irregular(path):
            path.unlink(missing_ok=True)

    def _set_aside_irregular(self, path: Path) -> bool:
        """Set ``path`` aside when something that is not a regular file (a directory, a link, a
        FIFO) sits there; True if it did."""
        if not os.path.lexists(path) or (path.is_file() and not path.is_symlink()):
            return False
        self._set_aside(path, ValueError("not a regular file"))
        return True

    def _set_aside(self, path: Path, err: BaseException) -> None:
        aside = path.parent / "damaged" / f"{path.stem}.{int(time.time())}.safetensors"
        aside.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, aside)
            where = f"moved to {aside}"
        except OSError:
            where = "could not be moved aside"
        warnings.warn(f"damaged checkpoint {path} ({type(err).__name__}: {err}); {where}; its cell "
                      "restarts from scratch", RuntimeWarning, stacklevel=3)


def _regular_file(path: Path) -> bool:
    """Whether ``path`` is a regular file; False for a name the system refuses (too long)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _one_line(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, anything unprintable (a newline) as '?'."""
    return "".join(ch if ch.isprintable() else "?" for ch in text[:limit])


def _shown(value: Any) -> str:
    """``value`` for a one-line message: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}... ({len(text)} characters)"


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in decoded JSON (0 for a scalar); without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d + 1)
            if deepest > MAX_JSON_DEPTH:
                return deepest
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _name_fault(what: str, value: Any) -> str | None:
    if not isinstance(value, str) or not 1 <= len(value) <= NAME_MAX or not value.isprintable():
        return (f"{what} {_shown(value)} is not 1-{NAME_MAX} printable characters")
    return None


def _numbers_fault(what: str, table: Any) -> str | None:
    if not isinstance(table, dict):
        return f"column {what!r} is a {type(table).__name__}, not a JSON object"
    for k, v in table.items():
        if len(k) > 4 * NAME_MAX or not (v is None or isinstance(v, _NUMBER)):
            return f"column {what!r} entry {_shown(k)} is {_shown(v)}, not a number"
    return None


def check_row(row: dict[str, Any]) -> str | None:
    """What is wrong with a decoded store row, or None when it has the shape resdyn writes: a
    cell id matching the name pattern, a plain spec name, status 'done' or 'diverged', a config
    object (where present: a data table with a string name, a model table with a string family,
    integer sample size and seed, train, measures and trackers tables), metrics, measures and
    timing mapping names to numbers, a provenance object. (Whether the config describes a cell
    is the codec's question: :meth:`Store.records`.)"""
    return _identity_fault(row) or _config_fault(row.get("config")) or _columns_fault(row)


def _identity_fault(row: dict[str, Any]) -> str | None:
    """What is wrong with a row's cell id, spec name or status."""
    if not isinstance(row.get("cell_id"), str) or _name_fault("", row["cell_id"]) is not None:
        return f"its cell id {_shown(row.get('cell_id'))} is not a plain name"
    try:
        check_name("cell id", row["cell_id"])
    except ValueError as err:
        return str(err)
    fault = _name_fault("its spec name", row.get("spec"))
    if fault is not None:
        return fault
    if row.get("status") not in ("done", "diverged"):
        return f"its status {_shown(row.get('status'))} is not 'done' or 'diverged'"
    return None


def _config_fault(cfg: Any) -> str | None:
    """What is wrong with the shape of a row's config column (see :func:`check_row`)."""
    if not isinstance(cfg, dict):
        return f"column 'config' is a {type(cfg).__name__}, not a JSON object"
    for section, key in (("data", "name"), ("model", "family")):
        table = cfg.get(section, {})
        if not isinstance(table, dict) or not isinstance(table.get(key, ""), str):
            return f"config.{section} is {_shown(table)}, not a table with a string {key!r}"
    for key in ("sample_size", "seed"):
        v = cfg.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int):
            return f"config.{key} is {_shown(v)}, not an integer"
    for key in ("train", "measures", "trackers", "certificate"):
        if not isinstance(cfg.get(key, {}), dict):
            return f"config.{key} is {_shown(cfg.get(key))}, not a table"
    return None


def _columns_fault(row: dict[str, Any]) -> str | None:
    """What is wrong with a row's numbers, provenance, weights path and sha256."""
    for what in ("metrics", "measures", "timing"):
        fault = _numbers_fault(what, row.get(what))
        if fault is not None:
            return fault
    if not isinstance(row.get("provenance"), dict):
        return f"column 'provenance' is {_shown(row.get('provenance'))}, not a JSON object"
    if not (row.get("weights") is None or isinstance(row["weights"], str)):
        return f"its weights path {_shown(row['weights'])} is not text"
    if not (row.get("sha256") is None or isinstance(row["sha256"], str)):
        return f"its sha256 {_shown(row['sha256'])} is not text"
    return None


def check_outcome(value: Any) -> str | None:
    """What is wrong with a stored outcome, or None when it has the shape resdyn writes: an
    object with a string name, tables mapping names to lists of objects, claims a list of
    objects with string text, measured and test and a verdict, figures mapping names to text
    (base64 PNG), and a data object."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return "is not a JSON object with a string 'name'"
    tables = value.get("tables", {})
    if not isinstance(tables, dict) or not all(
            isinstance(rows, list) and all(isinstance(r, dict) for r in rows)
            for rows in tables.values()):
        return "its 'tables' are not an object of lists of objects"
    import dataclasses

    from ..analysis.verdicts import Claim

    claims = value.get("claims", [])
    keys = {f.name for f in dataclasses.fields(Claim)} | {"held"}  # held: older outcomes
    if not isinstance(claims, list) or not all(
            isinstance(c, dict) and set(c) <= keys and isinstance(c.get("text"), str)
            and isinstance(c.get("measured"), str) and isinstance(c.get("test", ""), str)
            and isinstance(c.get("values", {}), dict) for c in claims):
        return (f"its 'claims' are not a list of objects of {', '.join(sorted(keys))} with string "
                "text, measured and test")
    figures = value.get("figures", {})
    if not isinstance(figures, dict) or not all(isinstance(v, str) for v in figures.values()):
        return "its 'figures' are not an object of base64 text"
    if not isinstance(value.get("data", {}), dict):
        return "its 'data' is not an object"
    return None


def _params_fault(model: Any, params: dict[str, torch.Tensor], expected: Any) -> str | None:
    """What is wrong with loaded weights for a row whose cell's model is ``expected``: a file
    describing another model, or tensors whose names, dtypes or shapes are not that model's (one
    model, no model axis)."""
    if model != expected:
        return f"holds a {getattr(model, 'family', '?')} model that differs from the row's"
    try:
        shapes = expected.init(torch.Generator().manual_seed(0), torch.float64,
                               torch.device("meta"))
    except Exception:  # a family that cannot build on the meta device: sizes from a real one
        shapes = expected.init(torch.Generator().manual_seed(0), torch.float64,
                               torch.device("cpu"))
    if set(params) != set(shapes):
        return (f"holds tensors {', '.join(sorted(params))[:120]}, not the model's "
                f"{', '.join(sorted(shapes))}")
    for k, v in params.items():
        if v.shape != shapes[k].shape or v.dtype not in (torch.float32, torch.float64):
            return (f"holds {k} of shape {tuple(v.shape)} and dtype {v.dtype}, not shape "
                    f"{tuple(shapes[k].shape)} float32 or float64")
    return None


def _checkpoint_digest(tensors: dict[str, torch.Tensor], head: dict[str, str]) -> str:
    """sha256 over the header fields and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps({k: head[k] for k in ("meta", "step")}, sort_keys=True).encode())
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        head = dict(f.metadata() or {})
    tensors = load_file(str(path))
    missing = {"meta", "step", "sha256"} - set(head)
    if missing:
        raise ValueError(f"header lacks {', '.join(sorted(missing))}")
    if _checkpoint_digest(tensors, head) != head["sha256"]:
        raise ValueError("contents do not match the sha256 in its header")
    if "step" not in tensors or int(tensors["step"][0]) != int(head["step"]):
        raise ValueError("step tensor disagrees with the header")
    return tensors, head


def _wait_nonempty(path: Path, wait: float = 1.0) -> None:
    """A 0-byte file is not a store; one that another process has just created gets ``wait``
    seconds to receive its header before it is refused."""
    deadline = time.monotonic() + wait
    while path.stat().st_size == 0:
        if time.monotonic() > deadline:
            raise StoreError(f"store {path} is empty (0 bytes): not a resdyn store; delete it or "
                             "pass another path")
        time.sleep(0.05)


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """SQLite ``mode=ro``. A WAL store in a folder this process cannot write cannot get its
    shared-memory file; when no write-ahead log holds data beyond the main file, it is then
    opened ``immutable`` (the main file is all there is to read)."""
    from urllib.parse import quote

    uri = "file:" + quote(str(path.resolve())) + "?mode=ro"
    db = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 60000")
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError:
        db.close()
        wal = Path(str(path) + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StoreError(f"store {path} cannot be read: its write-ahead log {wal} holds data "
                             "and the folder is not writable; open it once where it is writable") from None
    db = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None)
    return db


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): takes the write lock up front."""

    def __init__(self, db: sqlite3.Connection, path: Path | None = None):
        self.db, self.path = db, path

    def __enter__(self) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as err:
            raise StoreError(f"cannot write store {self.path}: {err}") from None

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        except sqlite3.DatabaseError as err:
            if exc_type is None:
                raise StoreError(f"cannot write store {self.path}: {err}") from None


def _enable_wal(db: sqlite3.Connection, timeout: float = 60.0) -> None:
    """Switch to write-ahead logging. SQLite answers a journal-mode change that races another
    connection's first open with SQLITE_BUSY at once, without calling the busy handler, so two
    processes creating one store together retry here instead of failing."""
    deadline, wait = time.monotonic() + timeout, 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(wait)
            wait = min(2 * wait, 0.25)


def _finite_or_none(v: float) -> float | None:
    v = float(v)
    return v if v == v and abs(v) != float("inf") else None
