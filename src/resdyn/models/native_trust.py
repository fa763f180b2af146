"""Whether compiled code of the native ResNet kernel may be loaded: the trust checks on its cache
folder and on a library file (:mod:`resdyn.models.native_build` builds them, and loads only what
:func:`trusted_library` passes).

The cache folder must belong to this user and be writable by no one else (else the kernel is
refused with one warning and the torch path runs); the library must be a regular file (not a link)
owned by this user, writable by no one else, whose sha256 equals the one recorded beside it
(``<library>.sha256``, :func:`digest_path`) when this process's user built it. The library is
opened once and checked through that open file, which the loader then loads
(``/proc/self/fd/N``), so the bytes hashed are the bytes loaded.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

__all__ = ["UntrustedError", "check_folder", "digest_path", "plain_own_file", "recorded_digest",
           "trusted_library"]


class UntrustedError(RuntimeError):
    """A cache folder or library file that compiled code must not be loaded from."""


def check_folder(folder: Path) -> None:
    """``folder`` (created 0700 if absent) belongs to this user and no one else may write it."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = os.stat(folder)
    if info.st_uid != os.geteuid():
        raise UntrustedError(f"the cache folder {folder} belongs to user {info.st_uid}, not to "
                             f"this user ({os.geteuid()}); set RESDYN_NATIVE_CACHE to a folder of "
                             "your own")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedError(f"the cache folder {folder} is writable by others (mode "
                             f"{stat.S_IMODE(info.st_mode):o}); make it 0700 or set "
                             "RESDYN_NATIVE_CACHE to a private folder")


def digest_path(library: Path) -> Path:
    """Where the sha256 of ``library`` is recorded at its build: ``<library>.sha256``."""
    return library.with_name(library.name + ".sha256")


def recorded_digest(library: Path) -> str | None:
    """The sha256 recorded beside ``library`` when it was built, if that record is a regular
    file of this user that no one else may write; else None."""
    try:
        fd = os.open(digest_path(library), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if (not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid()
                or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or info.st_size > 128):
            return None
        return os.read(fd, 128).decode("ascii", "replace").strip()
    finally:
        os.close(fd)


def _check_file(library: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise UntrustedError(f"{library} is not a regular file")
    if info.st_uid != os.geteuid():
        raise UntrustedError(f"{library} belongs to user {info.st_uid}, not to this user")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedError(f"{library} is writable by others (mode "
                             f"{stat.S_IMODE(info.st_mode):o})")


def trusted_library(library: Path) -> tuple[int, str]:
    """(an open descriptor of ``library``, its sha256) once it is a regular file (not a link) of
    this user, writable by no one else, whose sha256 (read through that descriptor) is the
    recorded one; :class:`UntrustedError` saying which it is not."""
    try:
        fd = os.open(library, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        raise UntrustedError(f"{library} cannot be opened ({err.strerror})") from None
    try:
        _check_file(library, os.fstat(fd))
        h = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
        want = recorded_digest(library)
        if want is None:
            raise UntrustedError(f"{library} has no sha256 recorded at its build")
        if h.hexdigest() != want:
            raise UntrustedError(f"{library} has sha256 {h.hexdigest()[:16]}..., not the "
                                 f"{want[:16]}... recorded at its build")
    except BaseException:
        os.close(fd)
        raise
    return fd, want


def plain_own_file(path: Path) -> bool:
    """A regular file (not a link) of this user that no one else may write."""
    info = os.lstat(path)
    return (stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
