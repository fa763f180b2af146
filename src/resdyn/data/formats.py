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
import math
import pickle
import re
import struct
from typing import Any, ClassVar

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
    count = math.prod(shape)  # Python ints: sizes near 2**32 cannot overflow
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

# Plain numeric dtypes only: bool, (un)signed ints and floats of 1-8 bytes, any byte order.
_PLAIN_DTYPE = re.compile(r"[<>=|]?(b1|[iu][1248]|f[248])")
#: Limits of the restricted unpickler: nesting of MARKs and of the result, objects on its stack
#: and memo, elements of one array, opcodes read.
MAX_DEPTH, MAX_STACK, MAX_ELEMENTS, MAX_OPS = 32, 100_000, 2**31, 10_000_000


def _refuse(what: str) -> UnsafePickleError:
    return UnsafePickleError(f"pickle {what}; a CIFAR batch holds only plain numeric numpy arrays, "
                             "lists, dicts, numbers and text")


def _dtype(obj: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """``numpy.dtype(obj, align, copy)`` for a plain numeric type code only (no objects, no
    fields, no void or sub-array types, whose pickled state numpy trusts)."""
    if not isinstance(obj, str) or _PLAIN_DTYPE.fullmatch(obj) is None:
        raise _refuse(f"asks for numpy dtype {obj!r}; only plain numeric dtypes are allowed")
    if not all(isinstance(v, bool | int) and v in (0, 1) for v in (align, copy)):
        raise _refuse(f"gives numpy dtype flags {align!r}, {copy!r}")
    return np.dtype(obj)


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` for the empty uint8 stub an ndarray pickle starts from, only."""
    if cls is not np.ndarray or shape != (0,) or typecode not in ("b", b"b"):
        raise _refuse(f"calls _reconstruct({getattr(cls, '__name__', cls)!r}, {shape!r}, "
                      f"{typecode!r}); only the empty ndarray stub is allowed")
    return _RECONSTRUCT(np.ndarray, (0,), b"b")


def _build_dtype(dt: np.dtype, state: Any) -> None:
    if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3
            and state[1] in ("|", "<", ">", "=") and state[2:5] == (None, None, None)
            and state[5:] == (-1, -1, 0)):
        raise _refuse(f"sets a numpy dtype state {state!r:.200}; only plain numeric states are "
                      "allowed")
    dt.__setstate__(state)


def _build_array(a: np.ndarray, state: Any) -> None:
    if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
        raise _refuse(f"sets an ndarray state of the wrong form ({type(state).__name__})")
    _, shape, dt, fortran, raw = state
    if not (isinstance(shape, tuple) and len(shape) <= MAX_DEPTH
            and all(type(n) is int and 0 <= n <= MAX_ELEMENTS for n in shape)):
        raise _refuse(f"gives an ndarray shape {shape!r:.200}")
    if not isinstance(dt, np.dtype) or _PLAIN_DTYPE.fullmatch(dt.str) is None or dt.hasobject:
        raise _refuse(f"gives an ndarray dtype {dt!r:.200}")
    if not isinstance(fortran, bool) or not isinstance(raw, str | bytes):
        raise _refuse("gives an ndarray layout or data of the wrong type")
    count = math.prod(shape)  # Python ints: no overflow
    if count > MAX_ELEMENTS or len(raw) != count * dt.itemsize:
        raise FormatError(f"ndarray of shape {shape} and dtype {dt} needs {count * dt.itemsize} "
                          f"bytes of data, the pickle gives {len(raw)}")
    a.__setstate__(state)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}
_CALLABLE = (_reconstruct, _dtype)
# Opcodes that build instances or reach the extension registry or persistent ids: never needed.
_FORBIDDEN = {pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.INST, pickle.OBJ, pickle.EXT1, pickle.EXT2,
              pickle.EXT4, pickle.PERSID, pickle.BINPERSID}


class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """The pure-Python unpickler, so that REDUCE and BUILD can be checked (the C one calls
    ``__setstate__`` unchecked), with limits on nesting, stack, memo and opcodes."""

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: io.BytesIO, filename: str):
        super().__init__(file, encoding="latin1")
        self.filename = filename
        self.ops = 0

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED)
            raise UnsafePickleError(
                f"{self.filename}: pickle refers to {module}.{name}, which the restricted unpickler "
                f"does not allow (allowed: {allowed}); the file is not a CIFAR batch") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.filename}: pickle uses persistent ids, not allowed")

    def _guard(self) -> None:
        self.ops += 1
        if (self.ops > MAX_OPS or len(self.metastack) > MAX_DEPTH or len(self.stack) > MAX_STACK
                or len(self.memo) > MAX_STACK):
            raise _refuse(f"exceeds the unpickler's limits (depth {MAX_DEPTH}, {MAX_STACK} objects, "
                          f"{MAX_OPS} opcodes)")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if func not in _CALLABLE or not isinstance(args, tuple):
            raise _refuse(f"calls {getattr(func, '__name__', type(func).__name__)}, not allowed")
        self.stack[-1] = func(*args)

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, np.dtype):
            _build_dtype(inst, state)
        elif type(inst) is np.ndarray:
            _build_array(inst, state)
        else:
            raise _refuse(f"sets the state of a {type(inst).__name__}, not allowed")

    def load_forbidden(self) -> None:
        raise _refuse("uses an opcode that builds arbitrary objects")


def _guarded(f: Any) -> Any:
    def run(self: _RestrictedUnpickler) -> None:
        f(self)
        self._guard()

    return run


_RestrictedUnpickler.dispatch.update({
    pickle.REDUCE[0]: _RestrictedUnpickler.load_reduce,
    pickle.BUILD[0]: _RestrictedUnpickler.load_build,
    **{op[0]: _RestrictedUnpickler.load_forbidden for op in _FORBIDDEN},
})
_RestrictedUnpickler.dispatch = {k: _guarded(f) for k, f in _RestrictedUnpickler.dispatch.items()}


def _check_tree(obj: Any, filename: str) -> None:
    """The result nests at most MAX_DEPTH deep and refers to no container twice on one path
    (a pickle's memo can make a list that holds itself)."""
    todo: list[tuple[Any, int, frozenset]] = [(obj, 0, frozenset())]
    while todo:
        o, depth, path = todo.pop()
        if not isinstance(o, list | dict | tuple):
            continue
        if depth > MAX_DEPTH or id(o) in path:
            raise UnsafePickleError(f"{filename}: pickle nests deeper than {MAX_DEPTH} or refers to "
                                    "itself; a CIFAR batch does neither")
        inner = path | {id(o)}
        items = [*o.keys(), *o.values()] if isinstance(o, dict) else o
        todo.extend((x, depth + 1, inner) for x in items)


def safe_unpickle(data: bytes, filename: str) -> Any:
    """Unpickle ``data`` (a CIFAR batch) allowing only plain numeric numpy arrays and plain
    containers.

    Text is decoded as latin1, as the Python 2 pickles of CIFAR need. Only the globals
    ``numpy.core.multiarray._reconstruct`` (for the empty ndarray stub), ``numpy.ndarray`` and
    ``numpy.dtype`` (plain numeric type codes) are admitted; array and dtype states are checked
    before numpy sees them; nesting, stack, memo and opcode counts are limited. Anything else
    raises :class:`UnsafePickleError`; a malformed stream raises :class:`FormatError`.
    """
    try:
        out = _RestrictedUnpickler(io.BytesIO(data), filename).load()
    except UnsafePickleError as err:
        msg = str(err)
        raise UnsafePickleError(msg if msg.startswith(filename) else f"{filename}: {msg}") from None
    except FormatError as err:
        raise FormatError(f"{filename}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, UnicodeDecodeError, OverflowError, struct.error, MemoryError,
            RecursionError) as err:
        raise FormatError(f"{filename}: not a readable CIFAR batch pickle ({type(err).__name__}: "
                          f"{str(err)[:200]})") from None
    _check_tree(out, filename)
    return out


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
