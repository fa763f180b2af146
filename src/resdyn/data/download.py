"""Explicit downloads (``resdyn data download``) and checks (``resdyn data verify``).

Nothing downloads implicitly: :func:`resdyn.data.load` only reads. :func:`fetch` uses the
standard library only (urllib) and

- writes to ``DEST.part`` next to the destination, never to ``DEST`` itself;
- resumes an interrupted transfer with an HTTP ``Range: bytes=K-`` request, K being the bytes
  already in ``DEST.part`` (a server that answers 200 instead of 206 restarts the file);
- checks the md5 of the finished ``.part`` against the manifest, and only then renames it onto
  ``DEST`` with ``os.replace`` (atomic on one file system); a wrong checksum deletes the
  ``.part`` and tries the next mirror (after one fresh attempt when the ``.part`` was resumed:
  its prefix may have been the fault);
- ties a ``.part`` to the URL that wrote it (``DEST.part.src``): another mirror, which may serve
  other bytes, starts the file afresh (a ``.part`` of unknown origin is resumed, then checked);
- never writes more than the manifest's size of the file (``size``; else :data:`DEFAULT_MAX_BYTES`)
  and gives up after an overall deadline, however slowly the bytes trickle in;
- reads ``Content-Length`` and ``Content-Range`` defensively: a malformed header is that
  mirror's fault, not a traceback.

CIFAR archives are then unpacked member by member (only the expected names, each checked
against its own md5) into a temporary folder that is renamed into place.
"""

from __future__ import annotations

import http.client
import io
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .files import CIFAR, MNIST_FILES
from .integrity import (
    ChecksumError,
    DataError,
    Manifest,
    checksums,
    expected_md5,
    manifest_entry,
    md5_bytes,
    md5_file,
    read_verified,
)

__all__ = ["DownloadError", "download", "extract_cifar", "fetch", "verify"]

Log = Callable[[str], None]

#: Most bytes written for a file whose manifest entry gives no size.
DEFAULT_MAX_BYTES = 2 * 2**30
#: Seconds one file may take in all, over every mirror and retry, by default.
DEFAULT_DEADLINE = 3600.0


class DownloadError(DataError, OSError):
    """No mirror delivered a file with the expected checksum."""


def _quiet(_: str) -> None:
    pass


class _Deadline(Exception):  # noqa: N818 - internal signal, never escapes fetch
    pass


class _TooLarge(Exception):  # noqa: N818 - internal signal, never escapes fetch
    pass


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


def _attempt(url: str, part: Path, timeout: float, max_bytes: int, deadline: float) -> None:
    """One request for ``url``, appending to ``part`` from its current size (Range resume)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "resdyn-data/1", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
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
                if time.monotonic() > deadline:
                    raise _Deadline
        # http.client returns b"" (no error) when the connection closes early: check the length.
        if length is not None and received < length:
            raise http.client.IncompleteRead(b"", length - received)


def fetch(urls: Sequence[str], dest: Path, md5: str, retries: int = 3, timeout: float = 30.0,
          log: Log = _quiet, max_bytes: int = DEFAULT_MAX_BYTES,
          deadline: float = DEFAULT_DEADLINE) -> Path:
    """Download ``dest`` from the first of ``urls`` that delivers it with md5 ``md5``.

    Each mirror gets ``retries`` resumed attempts after a dropped connection. At most
    ``max_bytes`` are written and the whole call takes at most about ``deadline`` seconds (plus
    one ``timeout``). Returns ``dest``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    problems: list[str] = []
    end = time.monotonic() + deadline
    for url in urls:
        src = _source(part)
        if part.exists() and src.exists() and src.read_text(errors="replace") != url:
            _discard(part)  # written by another mirror, which may serve other bytes
        resumed = part.exists() and part.stat().st_size > 0
        done = False  # only a complete transfer is checked; a refused one keeps its .part
        attempt = 0
        while attempt <= retries:
            attempt += 1
            try:
                _attempt(url, part, timeout, max_bytes, end)
                done = True
            except urllib.error.HTTPError as err:
                if err.code == 416 and part.exists():  # our .part is not a prefix of this file
                    _discard(part)
                    continue
                problems.append(f"{url}: HTTP {err.code} {err.reason}")
                break
            except _TooLarge as err:
                _discard(part)
                problems.append(f"{url}: sends more than {max_bytes} bytes ({err.args[0]} so far), "
                                "the most this file may have; discarded")
                break
            except _Deadline:
                problems.append(f"{url}: gave up after the overall deadline of {deadline:g} s "
                                f"(have {part.stat().st_size if part.exists() else 0} bytes)")
                break
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
                have = part.stat().st_size if part.exists() else 0
                problems.append(f"{url}: {type(err).__name__}: {err} (have {have} bytes)")
                if attempt <= retries and time.monotonic() < end:
                    log(f"  connection lost after {have} bytes; resuming")
                    continue
                break
            if done and md5_file(part) != md5:
                got = md5_file(part)
                _discard(part)
                problems.append(f"{url}: md5 {got}, expected {md5}; discarded")
                done = False
                if resumed:  # the resumed prefix may have been the fault: once more, afresh
                    resumed = False
                    continue
            break
        if time.monotonic() > end and not done:
            break
        if done:
            os.replace(part, dest)
            _source(part).unlink(missing_ok=True)
            return dest
    kept = f"; the partial file {str(part)!r} is kept for the next attempt" if part.exists() else ""
    if not part.exists():
        _source(part).unlink(missing_ok=True)
    raise DownloadError(f"could not fetch {dest.name} (md5 {md5}) into {str(dest.parent)!r}: "
                        + "; ".join(problems or ["no mirror given"]) + kept)


def extract_cifar(root: Path, name: str, manifest: Manifest | None = None) -> Path:
    """Unpack the verified archive of ``name`` into ``root/<folder>`` (expected members only,
    each checked against its md5; written to a temporary folder that is renamed into place)."""
    spec = CIFAR[name]
    blob = read_verified(root, spec["archive"], name, manifest)
    folder = root / spec["folder"]
    tmp = root / f".{spec['folder']}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        wanted = {f"{spec['folder']}/{f}" for f in (*spec["train"], *spec["test"], spec["meta"])}
        found = set()
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for m in tar:
                if not (m.isfile() and m.name in wanted):
                    continue
                data = tar.extractfile(m).read()  # type: ignore[union-attr]
                want = expected_md5(m.name, manifest)
                if md5_bytes(data) != want:
                    raise ChecksumError(f"{name}: archive member {m.name!r} has md5 "
                                        f"{md5_bytes(data)}, expected {want}")
                (tmp / Path(m.name).name).write_bytes(data)
                found.add(m.name)
        if found != wanted:
            raise ChecksumError(f"{name}: archive lacks {sorted(wanted - found)}")
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
             log: Log = _quiet, deadline: float = DEFAULT_DEADLINE) -> list[Path]:
    """Fetch the files of ``name`` ('mnist', 'cifar10', 'cifar100') into ``root``.

    ``mirrors``: base URLs tried in order (default: the official ones in the manifest); a file's
    URL is the base plus the file's name. Files already present with the right md5 are kept.
    CIFAR archives are unpacked afterwards. Returns the paths written or confirmed.
    """
    entry = manifest_entry(name)
    base = Path(root).expanduser()
    base.mkdir(parents=True, exist_ok=True)
    out = []
    for rel in entry["download"]:
        dest = base / rel
        want = expected_md5(rel, manifest)
        if dest.is_file() and md5_file(dest) == want:
            log(f"{rel}: present, md5 ok")
        else:
            log(f"{rel}: fetching")
            cap = int(entry.get("size", {}).get(rel, DEFAULT_MAX_BYTES))
            fetch([u + Path(rel).name for u in _mirrors(name, mirrors)], dest, want, retries,
                  timeout, log, max_bytes=cap, deadline=deadline)
            log(f"{rel}: done, md5 {want}")
        out.append(dest)
    if name in CIFAR:
        out.append(extract_cifar(base, name, manifest))
        log(f"{CIFAR[name]['folder']}: unpacked")
    return out


def verify(name: str, root: str | Path, manifest: Mapping[str, str] | None = None
           ) -> list[tuple[str, str]]:
    """(relative path, state) for every known file of ``name`` under ``root``: 'ok', 'absent',
    or 'md5 X, expected Y'. Whether the set loads is for :func:`resdyn.data.load` to say."""
    base = Path(root).expanduser()
    table = checksums(manifest)
    rels = list(manifest_entry(name)["md5"])
    if name == "mnist":
        rels = [r for rel in MNIST_FILES.values() for r in (rel + ".gz", rel)]
    rows = []
    for rel in rels:
        path = base / rel
        if not path.is_file():
            rows.append((rel, "absent"))
            continue
        want = table.get(rel)
        got = md5_file(path)
        if want is None:
            rows.append((rel, f"md5 {got}, no known checksum"))
        else:
            rows.append((rel, "ok" if got == want.lower() else f"md5 {got}, expected {want}"))
    return rows
