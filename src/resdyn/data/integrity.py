"""Checksums of downloaded data files: one manifest, one checking path, one family of errors.

The known checksums of the MNIST, Fashion-MNIST and CIFAR files live in ``manifest.json`` next
to this module, keyed by the file's path relative to the data root as torchvision lays it out
(``MNIST/raw/train-images-idx3-ubyte``, ``cifar-10-batches-py/data_batch_1``, ...): an entry's
``md5`` table and its ``sha256`` table (sha256 wins where a path has both). Every loader reads a
file through :func:`read_verified`, which returns its bytes only when their digest matches the
manifest; the bytes that were hashed are the bytes that are parsed (no second read). A digest of
32 hex digits is an md5, one of 64 a sha256.

Tests and local mirrors inject their own table, ``{relative path: md5 or sha256}``, either per
call (``load(..., manifest=...)``) or for a block of code (:func:`use_manifest`), so that
generated files go through the same checking path as the real ones.

File-backed sets are read from ``root``; ``root=None`` means :data:`DEFAULT_ROOT` (``./data``,
where ``resdyn data fetch`` writes by default).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import io
import json
import pickletools
import tarfile
import zlib
from collections.abc import Iterator, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_ROOT",
    "ChecksumError",
    "DataError",
    "DataRootError",
    "FormatError",
    "MissingFileError",
    "TruncatedFileError",
    "UnsafePickleError",
    "checksums",
    "digest_bytes",
    "digest_file",
    "digest_kind",
    "expected_digest",
    "fix_command",
    "manifest_entry",
    "md5_bytes",
    "read_verified",
    "use_manifest",
]

Manifest = Mapping[str, str]


#: The data root of the file-backed sets when none is given (relative to the working folder).
DEFAULT_ROOT = Path("data")


class DataError(Exception):
    """Base of every data-layer error."""


class DataRootError(DataError, FileNotFoundError):
    """The data root itself is missing (or is not a folder)."""


class MissingFileError(DataError, FileNotFoundError):
    """A file the data set needs is not under the root."""


class ChecksumError(DataError, ValueError):
    """A file's md5 differs from the manifest (a corrupt byte, a different release)."""


class TruncatedFileError(ChecksumError):
    """A file's md5 differs from the manifest and the file visibly ends early."""


class FormatError(DataError, ValueError):
    """A checksummed file whose contents are not in the expected format."""


class UnsafePickleError(DataError, ValueError):
    """A pickle asked for something the restricted unpickler does not allow."""


_override: contextvars.ContextVar[Manifest | None] = contextvars.ContextVar("resdyn_manifest",
                                                                             default=None)


@cache
def _builtin() -> dict[str, Any]:
    text = resources.files("resdyn.data").joinpath("manifest.json").read_text(encoding="utf-8")
    return json.loads(text)


def manifest_entry(name: str) -> dict[str, Any]:
    """The built-in manifest's entry of a file-backed data set (mirrors, downloads, md5s)."""
    table = _builtin()
    if name not in table:
        raise ValueError(f"no file manifest for data set {name!r}; file-backed sets: "
                         f"{', '.join(sorted(table))}")
    return table[name]


def checksums(manifest: Manifest | None = None) -> dict[str, str]:
    """The checksum table in force ({relative path: md5 or sha256}): ``manifest`` if given, else
    the one of :func:`use_manifest`, else the built-in one (every data set's files together, a
    path's sha256 in place of its md5 where the manifest has both)."""
    if manifest is not None:
        return dict(manifest)
    active = _override.get()
    if active is not None:
        return dict(active)
    table = {k: v for entry in _builtin().values() for k, v in entry.get("md5", {}).items()}
    table.update({k: v for entry in _builtin().values() for k, v in entry.get("sha256", {}).items()})
    return table


def digest_kind(digest: str) -> str:
    """'md5' for 32 hex digits, 'sha256' for 64; anything else is a :class:`ChecksumError`."""
    if isinstance(digest, str) and all(c in "0123456789abcdefABCDEF" for c in digest):
        kind = {32: "md5", 64: "sha256"}.get(len(digest))
        if kind is not None:
            return kind
    raise ChecksumError(f"checksum {str(digest)[:80]!r} is neither an md5 (32 hex digits) nor a "
                        "sha256 (64 hex digits)")


def _hasher(kind: str) -> Any:
    return hashlib.md5(usedforsecurity=False) if kind == "md5" else hashlib.sha256()


def digest_bytes(data: bytes, kind: str) -> str:
    """The hex digest of ``data`` by ``kind`` ('md5' or 'sha256')."""
    h = _hasher(kind)
    h.update(data)
    return h.hexdigest()


def digest_file(path: str | Path, kind: str, block: int = 1 << 20) -> str:
    """The hex digest of the file at ``path`` by ``kind`` ('md5' or 'sha256'), read in blocks."""
    h = _hasher(kind)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def fix_command(name: str, root: str | Path | None = None) -> str:
    """The command that fetches data set ``name`` into ``root`` (``--root`` omitted for the
    default root), quoted with backticks for an error message."""
    where = "" if root is None or Path(root) == DEFAULT_ROOT else f" --root {root}"
    return f"`resdyn data fetch {name}{where}`"


@contextlib.contextmanager
def use_manifest(manifest: Manifest) -> Iterator[dict[str, str]]:
    """Within the block, every loader checks files against ``manifest`` ({relative path: md5})
    instead of the built-in table. Yields the table."""
    table = {str(k): str(v).lower() for k, v in manifest.items()}
    token = _override.set(table)
    try:
        yield table
    finally:
        _override.reset(token)


def expected_digest(relpath: str, manifest: Manifest | None = None) -> str:
    """The checksum (md5 or sha256, lower case) the manifest in force gives for ``relpath`` (a
    path relative to the data root); a :class:`ChecksumError` when it gives none."""
    table = checksums(manifest)
    if relpath not in table:
        raise ChecksumError(
            f"no known checksum for {relpath!r} in the manifest in force ({len(table)} entries); "
            "a file is read only after its checksum has been checked against a known value")
    want = table[relpath].lower()
    digest_kind(want)
    return want


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def check_root(root: str | Path | None, name: str) -> Path:
    """``root`` (``None``: :data:`DEFAULT_ROOT`) as an existing folder, or a
    :class:`DataRootError` that names the folder and the command that fills it."""
    path = DEFAULT_ROOT if root is None else Path(root).expanduser()
    if not path.is_dir():
        given = "the default data root" if root is None else "data root"
        raise DataRootError(f"{given} {str(path)!r} for {name!r} does not exist or is not a "
                            f"folder; run {fix_command(name, None if root is None else path)} "
                            "(or pass the folder you gave torchvision as root)")
    return path


#: The most bytes :func:`read_verified` reads of one file unless told otherwise.
MAX_FILE_BYTES = 512 * 2**20


def read_verified(root: Path, relpath: str, name: str, manifest: Manifest | None = None,
                  max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``root / relpath``, returned only if their digest (md5 or sha256, as the
    manifest gives it) matches the manifest.

    Raises :class:`MissingFileError` (absent or not a regular file), :class:`FormatError` (larger
    than ``max_bytes``: refused before reading), :class:`TruncatedFileError` (wrong digest and
    the file ends early) or :class:`ChecksumError` (wrong digest), each one line naming the file,
    the expected checksum and the command that fixes it.
    """
    want = expected_digest(relpath, manifest)
    kind = digest_kind(want)
    path = root / relpath
    fix = fix_command(name, root)
    if not path.is_file():
        raise MissingFileError(f"{name}: missing file {str(path)!r} (expected {kind} {want}); "
                               f"run {fix}")
    size = path.stat().st_size
    if size > max_bytes:
        raise FormatError(f"{name}: file {str(path)!r} has {size} bytes, more than the {max_bytes} "
                          f"allowed for it; delete it and run {fix}")
    with open(path, "rb") as f:
        data = f.read(size + 1)  # read(n) allocates n bytes: ask for what stat promised
    if len(data) > size:
        raise FormatError(f"{name}: file {str(path)!r} grew while being read; delete it and run "
                          f"{fix}")
    got = digest_bytes(data, kind)
    if got != want:
        why = truncation(relpath, data)
        if why is not None:
            raise TruncatedFileError(
                f"{name}: file {str(path)!r} is truncated ({why}; {len(data)} bytes): {kind} {got}, "
                f"expected {want}; an interrupted copy or download? Delete it and run {fix}")
        raise ChecksumError(
            f"{name}: file {str(path)!r} is corrupt or not the expected release: {kind} {got}, "
            f"expected {want}; delete it and run {fix}")
    return data


def idx_declared_size(data: bytes) -> int | None:
    """Bytes an IDX file should have according to its header, or None if it has no header
    (Python integers: a header of huge sizes cannot overflow)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        return None
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        return None
    size = 1
    for i in range(ndim):
        size *= int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big")
    itemsize = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}.get(data[2], 1)
    return 4 + 4 * ndim + itemsize * size


#: The explanation of a failed checksum decompresses at most this many bytes (or 8 times the
#: file's size, if more): a decompression bomb costs bounded memory and time, never its full size.
EXPLAIN_MIN_BYTES = 64 * 2**20


class TooBigError(Exception):
    pass


class BoundedGunzip(io.RawIOBase):
    """A gzip stream decompressed piece by piece, refusing to produce more than ``cap`` bytes;
    EOFError when the input ends before the stream does. Holds one piece in memory at a time."""

    def __init__(self, data: bytes, cap: int):
        self.src, self.pos, self.cap, self.out = memoryview(data), 0, cap, 0
        self.z = zlib.decompressobj(wbits=31)
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        while not self.pending:
            if self.z.eof:
                rest = self.z.unused_data + bytes(self.src[self.pos:])
                if not rest.strip(b"\0"):
                    return 0
                # Another gzip member follows (gzip allows concatenation).
                self.z, self.src, self.pos = zlib.decompressobj(wbits=31), memoryview(rest), 0
            chunk = self.z.unconsumed_tail or bytes(self.src[self.pos : self.pos + (1 << 16)])
            if not self.z.unconsumed_tail:
                self.pos += len(chunk)
            if not chunk:
                raise EOFError("compressed stream ends early")
            self.pending = self.z.decompress(chunk, 1 << 20)
            self.out += len(self.pending)
            if self.out > self.cap:
                raise TooBigError
        n = min(len(buf), len(self.pending))
        buf[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


def truncation(relpath: str, data: bytes) -> str | None:
    """Why ``data`` (a file that failed its checksum) looks cut short, or None.

    Only parses, never executes, and reads a bounded amount: gzip streams are decompressed
    piece by piece up to ``max(EXPLAIN_MIN_BYTES, 8 len(data))`` bytes (beyond that no reason
    is given), tar archives listed as a stream, IDX headers compared with the length, and
    pickles walked with ``pickletools.genops``.
    """
    try:
        return _read_to_end(relpath, data, max(EXPLAIN_MIN_BYTES, 8 * len(data)))
    except Exception as err:  # any failure to parse is either a reason or no opinion
        return _ends_early(err)


def _read_to_end(relpath: str, data: bytes, cap: int) -> str | None:
    """Parse ``data`` as the file ``relpath`` names, to its end (at most ``cap`` bytes
    decompressed): the reason an IDX file looks short, else None; parse errors propagate."""
    is_idx = "idx" in Path(relpath).name
    if relpath.endswith(".tar.gz"):
        with tarfile.open(fileobj=io.BufferedReader(BoundedGunzip(data, cap)), mode="r|") as tar:
            for _ in tar:
                pass
        return None
    if relpath.endswith(".gz"):
        stream = io.BufferedReader(BoundedGunzip(data, cap))
        head = stream.read(64)
        total = len(head)
        while chunk := stream.read(1 << 20):
            total += len(chunk)
        return _idx_short(head, total) if is_idx else None
    if is_idx:
        return _idx_short(data[:64], len(data))
    for _ in pickletools.genops(io.BytesIO(data)):
        pass
    return None


def _idx_short(head: bytes, total: int) -> str | None:
    """Why an IDX file of ``total`` bytes that begins with ``head`` looks cut short, or None."""
    declared = idx_declared_size(head)
    if declared is None:
        return "no IDX header" if total < 8 else None
    return None if total >= declared else f"the IDX header declares {declared} bytes"


def _ends_early(err: Exception) -> str | None:
    """The reason a parse error ``err`` of :func:`_read_to_end` gives, or None (no opinion)."""
    if isinstance(err, TooBigError):  # beyond the decompression cap: no reason given
        return None
    if isinstance(err, EOFError):
        return "the compressed stream ends early"
    if isinstance(err, tarfile.ReadError):
        if "unexpected end" in str(err) or "truncated" in str(err):
            return "the compressed stream ends early"
        return f"the archive cannot be read to its end ({err})"
    if isinstance(err, ValueError):
        # pickletools: "pickle exhausted before seeing STOP", "expected N bytes ... only M remain"
        ends = any(s in str(err) for s in ("exhausted", "truncated", "remain"))
        return "the pickle ends early" if ends else None
    return None
