"""Names that become paths: one documented pattern, one sanitiser, one containment check.

A *name* that resdyn turns into a file name (a spec name, a cell id, a stored outcome name, a
figure name) must match :data:`NAME_PATTERN`: 1 to 128 characters from ``A-Z a-z 0-9 . _ -``,
starting with a letter or digit. So it holds no path separator, no ``..`` component, no NUL,
no newline, and it cannot be hidden (leading dot). Names read back from files (a store is
untrusted input) are mapped through :func:`safe_file_name` instead of being refused, so a
crafted row yields a harmless file name. Every write resolves inside its folder
(:func:`inside`), so a symlink or an unforeseen name cannot send it elsewhere either.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

__all__ = ["NAME_MAX", "NAME_PATTERN", "PathEscapeError", "check_name", "inside", "safe_file_name"]

NAME_MAX = 128
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class PathEscapeError(ValueError):
    """A path that would resolve outside the folder it must stay in."""


def _shown(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:60] + "...") + (
        f" ({len(value)} characters)" if len(value) > 60 else "")


def check_name(what: str, value: object) -> str:
    """``value`` if it is a string matching :data:`NAME_PATTERN`, else ``ValueError``/``TypeError``
    naming ``what`` and the allowed pattern."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__}")
    if NAME_PATTERN.fullmatch(value) is None or ".." in value:
        raise ValueError(f"{what} must be 1-{NAME_MAX} characters from A-Z a-z 0-9 . _ - starting "
                         f"with a letter or digit (no '/', '..', spaces or control characters); "
                         f"got {_shown(value)}")
    return value


def safe_file_name(value: object) -> str:
    """A file-name stem for an untrusted ``value``: itself when it already matches the name pattern,
    else its allowed characters (others as ``_``) plus a short hash of the original, so distinct
    names stay distinct. Never contains a separator, ``..``, or starts with a dot."""
    text = str(value)
    if NAME_PATTERN.fullmatch(text) is not None and ".." not in text:
        return text
    kept = re.sub(r"[^A-Za-z0-9_-]", "_", text)[:48].strip("_") or "name"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{kept}-{digest}"


def inside(folder: str | Path, path: str | Path) -> Path:
    """``path`` (relative to ``folder`` if not absolute), checked to resolve inside ``folder``."""
    base = Path(folder).resolve()
    target = (base / path).resolve()
    if target != base and base not in target.parents:
        raise PathEscapeError(f"path {str(path)!r} resolves to {str(target)!r}, outside the folder "
                              f"{str(base)!r} it must be written in")
    return target
