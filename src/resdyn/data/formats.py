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
import reprlib
import struct
import tarfile
import zlib
from typing import Any, ClassVar

import numpy as np

from .integrity import BoundedGunzip, FormatError, TooBigError, UnsafePickleError

__all__ = ["MAX_IDX_BYTES", "MAX_TAR_BYTES", "dumps_like_cifar", "gunzip_idx", "idx_header",
           "parse_idx", "safe_unpickle", "tar_members", "write_idx"]


# ---------------------------------------------------------------------------------------- IDX

#: The largest IDX file read (header included): MNIST's largest file has 47,040,016 bytes.
MAX_IDX_BYTES = 256 * 2**20


def idx_header(data: bytes, filename: str, ndim: int,
               max_bytes: int = MAX_IDX_BYTES) -> tuple[tuple[int, ...], int]:
    """(shape, total bytes) that the IDX header at the start of ``data`` declares.

    Checks the magic ``00 00 08 ndim`` (unsigned bytes, ``ndim`` dimensions), that the header is
    complete, and that the declared size (header included, Python integers: no overflow) is at
    most ``max_bytes``; a :class:`FormatError` naming the file and what is allowed otherwise.
    """
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
        raise FormatError(f"{filename}: IDX header cut short ({len(data)} bytes, a {ndim}-dimensional "
                          f"header has {head})")
    shape = struct.unpack(f">{ndim}I", data[4:head])
    total = head + math.prod(shape)  # Python ints: sizes near 2**32 cannot overflow
    if total > max_bytes:
        raise FormatError(f"{filename}: IDX header declares {shape} = {total} bytes, more than the "
                          f"{max_bytes} allowed")
    return shape, total


def parse_idx(data: bytes, filename: str, ndim: int, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """An IDX file's unsigned-byte array of ``ndim`` dimensions (a read-only view of ``data``).

    The header is checked by :func:`idx_header`; the file must have exactly the declared length.
    """
    try:
        shape, total = idx_header(data, filename, ndim, max_bytes)
    except FormatError as err:
        if "more than the" not in str(err):
            raise
        shape, total = idx_header(data, filename, ndim, max_bytes=2**200)
        raise FormatError(f"{filename}: IDX header declares {shape} = {total} bytes, file has "
                          f"{len(data)} (at most {max_bytes} are allowed)") from None
    if len(data) != total:
        raise FormatError(f"{filename}: IDX header declares {shape} = {total} bytes, file has "
                          f"{len(data)}")
    head = 4 + 4 * ndim
    return np.frombuffer(data, dtype=np.uint8, count=total - head, offset=head).reshape(shape)


def gunzip_idx(blob: bytes, filename: str, ndim: int, max_bytes: int = MAX_IDX_BYTES) -> bytes:
    """The decompressed bytes of a gzip-compressed IDX file, bounded by what its header declares.

    Decompresses piece by piece: first the header, checked by :func:`idx_header` (at most
    ``max_bytes`` declared), then exactly the declared number of bytes; a stream that would give
    more (a decompression bomb, whatever checksum vouched for it), that ends early, or that is
    not gzip at all is a one-line :class:`FormatError`. Memory: the declared size plus one piece.
    """
    if not blob:
        raise FormatError(f"{filename}: empty file, expected a gzip-compressed IDX file")
    stream = io.BufferedReader(BoundedGunzip(blob, max_bytes + (4 << 20)), buffer_size=1 << 16)
    try:
        head = stream.read(4)
        if len(head) == 4 and head[:3] == b"\0\0\x08":
            head += stream.read(4 * head[3])
        _, total = idx_header(head, filename, ndim, max_bytes)
        out = bytearray(total + 1)
        out[: len(head)] = head
        view, got = memoryview(out), len(head)
        while got <= total and (n := stream.readinto(view[got:])):
            got += n
    except EOFError:
        raise FormatError(f"{filename}: the gzip stream ends early (truncated)") from None
    except TooBigError:
        raise FormatError(f"{filename}: decompresses to more than the {max_bytes} bytes allowed") \
            from None
    except (zlib.error, OSError) as err:
        raise FormatError(f"{filename}: not a readable gzip file ({str(err)[:120]})") from None
    if got > total:
        raise FormatError(f"{filename}: decompresses to more than the {total} bytes its IDX header "
                          "declares")
    if got < total:
        raise FormatError(f"{filename}: decompresses to {got} bytes, its IDX header declares {total}")
    del view
    return bytes(out[:total])


def write_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of a uint8 array (the inverse of :func:`parse_idx`)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


# ------------------------------------------------------------------------------- archives

#: The most bytes a .tar.gz is decompressed to while its members are read (CIFAR's: 180 MB).
MAX_TAR_BYTES = 512 * 2**20


def tar_members(blob: bytes, wanted: set[str], filename: str,
                max_bytes: int = MAX_TAR_BYTES) -> dict[str, bytes]:
    """The members of the gzip-compressed tar archive ``blob`` whose names are in ``wanted``.

    Streams the archive (one pass, decompressed piece by piece to at most ``max_bytes`` in all);
    returns regular files only, by their exact member name: nothing is written, so a member's
    name never becomes a path. A wanted name that is a link, a folder or a device, or that comes
    twice, an archive that decompresses past ``max_bytes``, a truncated or non-gzip, non-tar
    stream: each a one-line :class:`FormatError` naming the archive. Missing members are the
    caller's to report.
    """
    out: dict[str, bytes] = {}
    try:
        stream = io.BufferedReader(BoundedGunzip(blob, max_bytes), buffer_size=1 << 16)
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for m in tar:
                if m.name not in wanted:
                    continue
                if not m.isreg() or m.name in out:
                    what = "comes twice" if m.name in out else "is not a regular file"
                    raise FormatError(f"{filename}: archive member {m.name!r} {what}")
                if m.size > max_bytes:
                    raise FormatError(f"{filename}: archive member {m.name!r} declares {m.size} "
                                      f"bytes, more than the {max_bytes} allowed")
                f = tar.extractfile(m)
                data = f.read() if f is not None else b""
                if len(data) != m.size:
                    raise FormatError(f"{filename}: archive member {m.name!r} ends early")
                out[m.name] = data
    except TooBigError:
        raise FormatError(f"{filename}: decompresses to more than the {max_bytes} bytes allowed"
                          ) from None
    except EOFError:
        raise FormatError(f"{filename}: the gzip stream ends early (truncated)") from None
    except (tarfile.TarError, zlib.error, OSError) as err:
        raise FormatError(f"{filename}: not a readable .tar.gz archive ({type(err).__name__}: "
                          f"{str(err)[:120]})") from None
    return out


# --------------------------------------------------------------------------------- pickles

_RECONSTRUCT = np.zeros(0).__reduce__()[0]

# Plain numeric dtypes only: bool, (un)signed ints and floats of 1-8 bytes, any byte order.
_PLAIN_DTYPE = re.compile(r"[<>=|]?(b1|[iu][1248]|f[248])")
#: Limits of the restricted unpickler: nesting of MARKs and of the result, objects on its stack
#: and memo, elements of one array, opcodes read (a CIFAR-100 training batch needs about 300,000),
#: and objects in the result counted as a tree (a container reached twice counts twice: a few
#: bytes of memo references can describe a tree of 2**1000 nodes).
MAX_DEPTH, MAX_STACK, MAX_ELEMENTS, MAX_OPS = 32, 100_000, 2**31, 2_000_000
MAX_NODES = 2_000_000

_short_repr = reprlib.Repr()
_short_repr.maxlevel, _short_repr.maxtuple, _short_repr.maxlist, _short_repr.maxdict = 2, 4, 4, 4
_short_repr.maxstring, _short_repr.maxother, _short_repr.maxlong = 60, 60, 40


def _show(obj: Any) -> str:
    """A repr of at most about 200 characters, in time bounded whatever ``obj`` nests."""
    return _short_repr.repr(obj)[:200]


def _refuse(what: str) -> UnsafePickleError:
    return UnsafePickleError(f"pickle {what}; a CIFAR batch holds only plain numeric numpy arrays, "
                             "lists, dicts, numbers and text")


def _dtype(obj: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """``numpy.dtype(obj, align, copy)`` for a plain numeric type code only (no objects, no
    fields, no void or sub-array types, whose pickled state numpy trusts)."""
    if not isinstance(obj, str) or _PLAIN_DTYPE.fullmatch(obj) is None:
        raise _refuse(f"asks for numpy dtype {_show(obj)}; only plain numeric dtypes are allowed")
    if not all(isinstance(v, bool | int) and v in (0, 1) for v in (align, copy)):
        raise _refuse(f"gives numpy dtype flags {_show(align)}, {_show(copy)}")
    return np.dtype(obj)


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` for the empty uint8 stub an ndarray pickle starts from, only."""
    if cls is not np.ndarray or shape != (0,) or typecode not in ("b", b"b"):
        raise _refuse(f"calls _reconstruct({_show(getattr(cls, '__name__', cls))}, {_show(shape)}, "
                      f"{_show(typecode)}); only the empty ndarray stub is allowed")
    return _RECONSTRUCT(np.ndarray, (0,), b"b")


def _build_dtype(dt: np.dtype, state: Any) -> None:
    if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3
            and state[1] in ("|", "<", ">", "=") and state[2:5] == (None, None, None)
            and state[5:] == (-1, -1, 0)):
        raise _refuse(f"sets a numpy dtype state {_show(state)}; only plain numeric states are "
                      "allowed")
    dt.__setstate__(state)


def _build_array(a: np.ndarray, state: Any) -> None:
    if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
        raise _refuse(f"sets an ndarray state of the wrong form ({type(state).__name__})")
    _, shape, dt, fortran, raw = state
    if not (isinstance(shape, tuple) and len(shape) <= MAX_DEPTH
            and all(type(n) is int and 0 <= n <= MAX_ELEMENTS for n in shape)):
        raise _refuse(f"gives an ndarray shape {_show(shape)}")
    if not isinstance(dt, np.dtype) or _PLAIN_DTYPE.fullmatch(dt.str) is None or dt.hasobject:
        raise _refuse(f"gives an ndarray dtype {_show(dt)}")
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
# Opcodes that build instances or reach the extension registry or persistent ids, and sets
# (protocol 4; hashing their members could cost time exponential in the pickle's size): never
# needed by a CIFAR batch.
_FORBIDDEN = {pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.INST, pickle.OBJ, pickle.EXT1, pickle.EXT2,
              pickle.EXT4, pickle.PERSID, pickle.BINPERSID, pickle.EMPTY_SET, pickle.ADDITEMS,
              pickle.FROZENSET}
#: The types a dict key may have: hashing them costs time linear in their size.
_KEY_TYPES = (str, bytes, int, float, bool, type(None))


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
        raise _refuse("uses an opcode that builds arbitrary objects or sets")

    def _keys(self, keys: Any) -> None:
        for k in keys:
            if type(k) not in _KEY_TYPES:
                raise _refuse(f"uses a {type(k).__name__} as a dict key; keys must be text or "
                              "numbers")

    def load_setitem(self) -> None:
        self._keys(self.stack[-2:-1])
        super().load_setitem()

    def load_setitems(self) -> None:
        self._keys(self.stack[0::2])  # since MARK, self.stack holds only the key/value pairs
        super().load_setitems()

    def load_dict(self) -> None:
        self._keys(self.stack[0::2])
        super().load_dict()


def _guarded(f: Any) -> Any:
    def run(self: _RestrictedUnpickler) -> None:
        f(self)
        self._guard()

    return run


_RestrictedUnpickler.dispatch.update({
    pickle.REDUCE[0]: _RestrictedUnpickler.load_reduce,
    pickle.BUILD[0]: _RestrictedUnpickler.load_build,
    pickle.SETITEM[0]: _RestrictedUnpickler.load_setitem,
    pickle.SETITEMS[0]: _RestrictedUnpickler.load_setitems,
    pickle.DICT[0]: _RestrictedUnpickler.load_dict,
    **{op[0]: _RestrictedUnpickler.load_forbidden for op in _FORBIDDEN},
})
_RestrictedUnpickler.dispatch = {k: _guarded(f) for k, f in _RestrictedUnpickler.dispatch.items()}


def _check_tree(obj: Any, filename: str) -> None:
    """The result nests at most MAX_DEPTH deep, counts at most MAX_NODES objects as a tree, and
    refers to no container from inside itself (a pickle's memo can make a list that holds
    itself).

    Each container is visited once (its depth and tree size are remembered by identity), so the
    check costs time linear in the number of distinct objects, however often the memo reuses one.
    """
    size: dict[int, int] = {}  # id -> (tree size, depth) once finished
    depth: dict[int, int] = {}
    active: set[int] = set()
    todo: list[tuple[Any, bool]] = [(obj, False)]
    while todo:
        o, done = todo.pop()
        key = id(o)
        if done:
            kids = _children(o)
            size[key] = 1 + sum(size.get(id(k), 1) for k in kids)
            depth[key] = 1 + max((depth.get(id(k), 0) for k in kids), default=0)
            active.discard(key)
            if depth[key] > MAX_DEPTH + 1:
                raise UnsafePickleError(f"{filename}: pickle nests deeper than {MAX_DEPTH}; a "
                                        "CIFAR batch does not")
            if size[key] > MAX_NODES:
                raise UnsafePickleError(
                    f"{filename}: pickle holds more than {MAX_NODES} objects counted as a tree (a "
                    "container the memo reuses counts each time); a CIFAR batch does not")
            continue
        if not isinstance(o, list | dict | tuple) or key in size:
            continue
        if key in active:
            raise UnsafePickleError(f"{filename}: pickle refers to itself (a container inside "
                                    "itself); a CIFAR batch never does")
        if len(active) > MAX_DEPTH:
            raise UnsafePickleError(f"{filename}: pickle nests deeper than {MAX_DEPTH}; a CIFAR "
                                    "batch does not")
        active.add(key)
        todo.append((o, True))
        todo.extend((k, False) for k in _children(o))


def _children(o: Any) -> list[Any]:
    if isinstance(o, dict):
        return [*o.keys(), *o.values()]
    return list(o) if isinstance(o, list | tuple) else []


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
