"""Explicit downloads (``resdyn data download``) and checks (``resdyn data verify``).

Nothing downloads implicitly: :func:`resdyn.data.load` only reads. :func:`fetch` uses the
standard library only (urllib) and

- writes to ``DEST.part`` next to the destination, never to ``DEST`` itself;
- resumes an interrupted transfer with an HTTP ``Range: bytes=K-`` request, K being the bytes
  already in ``DEST.part`` (a server that answers 200 instead of 206 restarts the file);
- checks the md5 of the finished ``.part`` against the manifest, and only then renames it onto
  ``DEST`` with ``os.replace`` (atomic on one file system); a wrong checksum deletes the
  ``.part`` and tries the next mirror.

CIFAR archives are then unpacked member by member (only the expected names, each checked
against its own md5) into a temporary folder that is renamed into place.
"""

from __future__ import annotations

import http.client
import io
import os
import shutil
import tarfile
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


class DownloadError(DataError, OSError):
    """No mirror delivered a file with the expected checksum."""


def _quiet(_: str) -> None:
    pass


def _attempt(url: str, part: Path, timeout: float) -> None:
    """One request for ``url``, appending to ``part`` from its current size (Range resume)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "resdyn-data/1", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        mode = "wb"
        if offset and resp.status == 206:
            start = resp.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            if start.strip() != str(offset):
                raise http.client.HTTPException(f"server resumed at {start!r}, asked for {offset}")
            mode = "ab"
        length = resp.headers.get("Content-Length")
        received = 0
        with open(part, mode) as f:
            while chunk := resp.read(1 << 16):
                f.write(chunk)
                received += len(chunk)
        # http.client returns b"" (no error) when the connection closes early: check the length.
        if length is not None and received < int(length):
            raise http.client.IncompleteRead(b"", int(length) - received)


def fetch(urls: Sequence[str], dest: Path, md5: str, retries: int = 3, timeout: float = 30.0,
          log: Log = _quiet) -> Path:
    """Download ``dest`` from the first of ``urls`` that delivers it with md5 ``md5``.

    Each mirror gets ``retries`` resumed attempts after a dropped connection. Returns ``dest``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    problems: list[str] = []
    for url in urls:
        done = False  # only a complete transfer is checked; a refused one keeps its .part
        for attempt in range(retries + 1):
            try:
                _attempt(url, part, timeout)
                done = True
                break
            except urllib.error.HTTPError as err:
                if err.code == 416 and part.exists():  # our .part is not a prefix of this file
                    part.unlink()
                    continue
                problems.append(f"{url}: HTTP {err.code} {err.reason}")
                break
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
                have = part.stat().st_size if part.exists() else 0
                problems.append(f"{url}: {type(err).__name__}: {err} (have {have} bytes)")
                if attempt < retries:
                    log(f"  connection lost after {have} bytes; resuming")
        if not done or not part.exists():
            continue
        got = md5_file(part)
        if got != md5:
            part.unlink()
            problems.append(f"{url}: md5 {got}, expected {md5}; discarded")
            continue
        os.replace(part, dest)
        return dest
    kept = f"; the partial file {str(part)!r} is kept for the next attempt" if part.exists() else ""
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
             log: Log = _quiet) -> list[Path]:
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
            fetch([u + Path(rel).name for u in _mirrors(name, mirrors)], dest, want, retries,
                  timeout, log)
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
