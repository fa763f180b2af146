"""Byte formats of the real data files: IDX (MNIST) and CIFAR's pickled batches.

IDX (LeCun's format): a 4-byte magic ``00 00 TT DD`` (TT the element type, 0x08 = unsigned byte;
DD the number of dimensions), then DD big-endian uint32 sizes, then the elements in C order.
MNIST's image files are ``00 00 08 03`` with sizes (N, 28, 28); label files ``00 00 08 01``.

CIFAR python batches: a Python 2 ``cPickle`` (protocol 2) of a dict. Text is Python 2 ``str``
(BINSTRING opcodes), so it is read with ``encoding='latin1'``; ``data`` is a numpy uint8 array
(N, 3072), rows being the red, green then blue 32x32 planes; labels are a list of ints. The only
globals such a pickle names are ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and
``numpy.dtype``. :func:`safe_unpickle` allows exactly those (also under numpy 2's
``numpy._core`` path) and rejects every other global, so a crafted pickle raises instead of
running code; it is only ever called on bytes whose md5 has matched the manifest.
"""

from __future__ import annotations

import io
import pickle
import struct
from typing import Any

import numpy as np

from .integrity import FormatError, UnsafePickleError

__all__ = ["dumps_like_cifar", "parse_idx", "safe_unpickle", "write_idx"]


# ---------------------------------------------------------------------------------------- IDX


def parse_idx(data: bytes, filename: str, ndim: int) -> np.ndarray:
    """An IDX file's unsigned-byte array of ``ndim`` dimensions (a read-only view of ``data``)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise FormatError(f"{filename}: not an IDX file (magic bytes {data[:4].hex()!r}, expected "
                          f"'0000080{ndim}')")
    if data[2] != 0x08:
        raise FormatError(f"{filename}: IDX element type 0x{data[2]:02x}, expected 0x08 (unsigned "
                          "byte)")
    if data[3] != ndim:
        raise FormatError(f"{filename}: IDX file has {data[3]} dimensions, expected {ndim}")
    head = 4 + 4 * ndim
    if len(data) < head:
        raise FormatError(f"{filename}: IDX header cut short ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:head])
    count = int(np.prod(shape))
    if len(data) != head + count:
        raise FormatError(f"{filename}: IDX header declares {shape} = {head + count} bytes, file has "
                          f"{len(data)}")
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=head).reshape(shape)


def write_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of a uint8 array (the inverse of :func:`parse_idx`)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


# --------------------------------------------------------------------------------- pickles

_RECONSTRUCT = np.zeros(0).__reduce__()[0]


def _dtype(*args: Any) -> np.dtype:
    dt = np.dtype(*args)
    if dt.hasobject:
        raise UnsafePickleError(f"pickle asks for a numpy dtype holding Python objects ({dt}); only "
                                "plain numeric dtypes are allowed")
    return dt


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, filename: str):
        super().__init__(file, encoding="latin1")
        self.filename = filename

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED)
            raise UnsafePickleError(
                f"{self.filename}: pickle refers to {module}.{name}, which the restricted unpickler "
                f"does not allow (allowed: {allowed}); the file is not a CIFAR batch") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.filename}: pickle uses persistent ids, not allowed")


def safe_unpickle(data: bytes, filename: str) -> Any:
    """Unpickle ``data`` (a CIFAR batch) allowing only numpy arrays and plain containers.

    Text is decoded as latin1, as the Python 2 pickles of CIFAR need. Any other global, or a
    dtype holding Python objects, raises :class:`UnsafePickleError`; a malformed stream raises
    :class:`FormatError`.
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(data), filename).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError) as err:
        raise FormatError(f"{filename}: not a readable CIFAR batch pickle ({err})") from None


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol-2 pickles as Python 2's cPickle wrote them: text (``str`` or ``bytes``) becomes
    a Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), numpy's globals use the old
    ``numpy.core.multiarray`` path."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: str | bytes) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        n = len(raw)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + raw)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", None) or "__main__"
        name = name or obj.__qualname__
        if module in ("numpy._core.multiarray", "numpy.core.multiarray"):
            module = "numpy.core.multiarray"
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))
        self.memoize(obj)


def dumps_like_cifar(obj: Any) -> bytes:
    """Pickle ``obj`` byte for byte the way CIFAR's files were written (see :class:`_Py2Pickler`)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()
