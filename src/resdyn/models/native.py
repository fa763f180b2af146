"""The native two-layer ResNet: ``csrc/resnet.c`` compiled on first use, called through ctypes.

A two-layer residual layer of width m and hidden width p costs 2 m p multiply-adds per row
forward and 4 m p backward; as batched matrix products of (64 x 16) by (16 x 16) blocks the CPU
build of torch runs them at a fraction of the machine's speed, and the activation, the residual
add, the embedding, the readout and the per-chunk gradient sums are separate passes over memory.
The C kernel takes a chunk of rows from input to output (and back) with a row in vector
registers, and its backward reads the chunk's layers from cache (docs/engine.md, "Native
ResNet").

One shared library per (dtype, d, m, p, k) is built with the system C compiler (``$CC``, else
``cc``, ``gcc`` or ``clang``) for this machine's instruction set (``-march=native``) and cached
under ``$RESDYN_NATIVE_CACHE`` (default ``~/.cache/resdyn/native``), keyed by the source, the
flags, the compiler and this CPU's feature flags, so that machines of a cluster sharing a home
directory each get their own build. Where no compiler works, :func:`resnet_library` warns once
and returns None, and the torch path runs instead; ``RESDYN_NATIVE=0`` asks for the torch path
everywhere.

Compiled code is loaded only when it can be trusted (:func:`_trusted_library`): the cache folder
must belong to this user and be writable by no one else (else the kernel is refused with one
warning and the torch path runs); the library must be a regular file (not a link) owned by this
user, writable by no one else, whose sha256 equals the one recorded beside it
(``<library>.sha256``) when this process's user built it. Anything else (a planted library, one
writable by others, a damaged file) is rebuilt, with one warning line naming the file (quietly
for a file of this user with no record at all: a library built before records were kept). The
library is opened once, checked through that open file, and loaded from it
(``/proc/self/fd/N``), so the bytes hashed are the bytes loaded.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .activations import Activation
from .fused import transformed

__all__ = ["ACT_CODES", "MAX_IO", "MAX_WIDTH", "NativeResNet", "activation_code", "cache_dir",
           "enabled", "native_resnet", "resnet_library"]

SOURCE = Path(__file__).with_name("csrc") / "resnet.c"
FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math",
         "-fPIC", "-shared")
#: Threads come from OpenMP: linked to libgomp.so.1, the library shares the runtime torch has
#: loaded (the loader matches the soname), so the kernel's team is torch's awake intra-op pool.
#: A compiler without OpenMP builds a single-threaded kernel.
OPENMP = ("-fopenmp",)
#: Activations the kernel computes, by name, with their code in csrc/resnet.c.
ACT_CODES = {"tanh": 0, "relu": 1, "soft_threshold": 2, "shifted_relu": 3}
#: Widest state m or hidden width p built natively (a row's vectors live in registers).
MAX_WIDTH = 256
#: Largest input size d or output size k built natively.
MAX_IO = 16384
_DTYPES = {torch.float32: "float", torch.float64: "double"}

_lock = threading.Lock()
_built: dict[tuple[torch.dtype, int, int, int, int], NativeResNet | None] = {}
_failure: str | None = None


def enabled() -> bool:
    """False when ``RESDYN_NATIVE=0`` (the torch path everywhere)."""
    return os.environ.get("RESDYN_NATIVE", "1").strip() not in ("0", "false", "no", "off")


def activation_code(act: Activation) -> int | None:
    """The kernel's code for ``act``, or None when the kernel does not compute it."""
    return ACT_CODES.get(act.name)


_P = ctypes.c_void_p
_I = ctypes.c_int
_D = ctypes.c_double


@dataclass(frozen=True)
class NativeResNet:
    """A loaded library for one (dtype, d, m, p, k). Arrays are contiguous CPU tensors of that
    dtype: inputs x (B, n, d) in B chunks, chunk c run by network owner[c] (int64, (B,)) of the
    E whose weights are A (E, m, d), c (E, m), W (E, L, p, m), b (E, L, p), V (E, L, m, p),
    R (E, k, m), r (E, k)."""

    lib: ctypes.CDLL
    widths: tuple[int, int, int, int]

    def forward(self, x: Tensor, owner: Tensor, weights: tuple[Tensor, ...], h: float, act: int,
                tau: float) -> Tensor:
        """f (B, n, k) for the weights (A, c, W, b, V, R, r)."""
        B, n, _ = x.shape
        out = x.new_empty((B, n, self.widths[3]))
        _check(self.lib.rs_forward(B, weights[0].shape[0], n, weights[2].shape[1], h, act, tau,
                                   owner.data_ptr(), x.data_ptr(),
                                   *(w.data_ptr() for w in weights), out.data_ptr(),
                                   torch.get_num_threads()))
        return out

    def backward(self, x: Tensor, owner: Tensor, weights: tuple[Tensor, ...], h: float, act: int,
                 tau: float, e: Tensor, want_x: bool) -> tuple[Tensor | None, ...]:
        """(dJ/dx or None, dJ/dA, dJ/dc, ..., dJ/dr) from e = dJ/df (B, n, k); a network's
        gradient is the sum of its chunks' in chunk order."""
        B, n, _ = x.shape
        grads = [torch.empty_like(w) for w in weights]
        gx = torch.empty_like(x) if want_x else None
        _check(self.lib.rs_backward(B, weights[0].shape[0], n, weights[2].shape[1], h, act, tau,
                                    owner.data_ptr(), x.data_ptr(),
                                    *(w.data_ptr() for w in weights), e.data_ptr(),
                                    *(g.data_ptr() for g in grads),
                                    None if gx is None else gx.data_ptr(),
                                    torch.get_num_threads()))
        return (gx, *grads)


def _check(status: int) -> None:
    if status == 2:
        raise ValueError("native ResNet: a chunk's owner is outside [0, E) for E networks")
    if status:
        raise MemoryError("native ResNet: could not allocate its buffers")


def resnet_library(dtype: torch.dtype, d: int, m: int, p: int, k: int) -> NativeResNet | None:
    """The native ResNet for (dtype, d, m, p, k), built on first use; None when it cannot be used
    here (disabled, an unsupported dtype or width, or no working C compiler: warned once)."""
    if not enabled() or dtype not in _DTYPES:
        return None
    if not (1 <= m <= MAX_WIDTH and 1 <= p <= MAX_WIDTH and 1 <= d <= MAX_IO and 1 <= k <= MAX_IO):
        return None
    key = (dtype, d, m, p, k)
    with _lock:
        if key not in _built:
            _built[key] = _build(dtype, (d, m, p, k))
        return _built[key]


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@functools.cache
def _toolchain_key(cc: str) -> str:
    """What a build depends on besides the source and flags: the compiler's version and this
    CPU's feature flags (``-march=native``). Once per compiler and process."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    cpu = platform.machine() + platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                cpu = line
                break
    except OSError:
        pass
    return "\0".join([cc, version, cpu])


def cache_dir() -> Path:
    """Where built libraries are kept: ``$RESDYN_NATIVE_CACHE``, else ``~/.cache/resdyn/native``
    (``$XDG_CACHE_HOME`` respected)."""
    if os.environ.get("RESDYN_NATIVE_CACHE"):
        return Path(os.environ["RESDYN_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "resdyn" / "native"


class UntrustedError(RuntimeError):
    """A cache folder or library file that compiled code must not be loaded from."""


def _check_folder(folder: Path) -> None:
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


def _digest_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _recorded_digest(library: Path) -> str | None:
    """The sha256 recorded beside ``library`` when it was built, if that record is a regular
    file of this user that no one else may write; else None."""
    try:
        fd = os.open(_digest_path(library), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
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


def _trusted_library(library: Path) -> int:
    """An open descriptor of ``library`` once it is a regular file (not a link) of this user,
    writable by no one else, whose sha256 (read through that descriptor) is the recorded one;
    :class:`UntrustedError` saying which it is not."""
    try:
        fd = os.open(library, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        raise UntrustedError(f"{library} cannot be opened ({err.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedError(f"{library} is not a regular file")
        if info.st_uid != os.geteuid():
            raise UntrustedError(f"{library} belongs to user {info.st_uid}, not to this user")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UntrustedError(f"{library} is writable by others (mode "
                                 f"{stat.S_IMODE(info.st_mode):o})")
        h = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
        want = _recorded_digest(library)
        if want is None:
            raise UntrustedError(f"{library} has no sha256 recorded at its build")
        if h.hexdigest() != want:
            raise UntrustedError(f"{library} has sha256 {h.hexdigest()[:16]}..., not the "
                                 f"{want[:16]}... recorded at its build")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _plain_own_file(path: Path) -> bool:
    """A regular file (not a link) of this user that no one else may write."""
    info = os.lstat(path)
    return (stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()
            and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _compile(cc: str, defines: list[str], target: Path) -> None:
    """Build the library into ``target`` with its sha256 beside it. Built beside the target
    (0700) and renamed into place: processes building the same library at once each rename a
    complete file; the record is written after the library, so a library never has another's."""
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        for extra in (OPENMP, ()):
            run = subprocess.run([cc, *FLAGS, *extra, *defines, "-o", tmp, str(SOURCE)],
                                 capture_output=True, text=True, timeout=300)
            if run.returncode == 0:
                break
        else:
            raise RuntimeError(f"{cc} failed: {run.stderr.strip()[-2000:]}")
        os.chmod(tmp, 0o700)
        digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        fd, tmp_digest = tempfile.mkstemp(suffix=".sha256", dir=target.parent)
        with os.fdopen(fd, "w") as f:
            f.write(digest + "\n")
        os.replace(tmp, target)
        os.replace(tmp_digest, _digest_path(target))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _open_trusted(cc: str, defines: list[str], target: Path) -> int:
    """A descriptor of a trusted library at ``target``: the cached one, or a fresh build when
    there is none or the cached one is not trusted (one warning line naming why)."""
    if os.path.lexists(target):
        try:
            return _trusted_library(target)
        except UntrustedError as err:
            # A library of this user without a record (built before records were kept) is
            # rebuilt quietly; anything else says what was found.
            if _recorded_digest(target) is not None or not _plain_own_file(target):
                warnings.warn(f"resdyn: not loading the native ResNet library: {err}; it is "
                              "rebuilt", RuntimeWarning, stacklevel=4)
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
    _compile(cc, defines, target)
    return _trusted_library(target)


def _build(dtype: torch.dtype, widths: tuple[int, int, int, int]) -> NativeResNet | None:
    global _failure
    if _failure is not None:
        return None
    cc = _compiler()
    try:
        if cc is None:
            raise RuntimeError("no C compiler found ($CC, cc, gcc or clang)")
        defines = [f"-DRS_{name}={w}" for name, w in zip("DMPK", widths, strict=True)]
        defines += ["-DRS_DOUBLE"] if dtype == torch.float64 else []
        digest = hashlib.sha256("\0".join([SOURCE.read_text(), *FLAGS, *OPENMP, *defines,
                                           _toolchain_key(cc)]).encode()).hexdigest()[:16]
        shape = "x".join(map(str, widths))
        folder = cache_dir()
        _check_folder(folder)
        target = folder / f"resnet_{_DTYPES[dtype]}_{shape}_{digest}.so"
        fd = _open_trusted(cc, defines, target)
        try:
            # The descriptor stays open while the process lives (the library stays loaded too):
            # the loader knows a library by its name, and a reused /proc/self/fd/N would name
            # an earlier one.
            return _load(target, dtype, widths, fd)
        except BaseException:
            os.close(fd)
            raise
    except UntrustedError as err:
        _failure = str(err)
        warnings.warn(f"resdyn: the native ResNet is not loaded ({_failure}); the two-layer ResNet "
                      "runs on the torch path.", RuntimeWarning, stacklevel=3)
        return None
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        _failure = " ".join(str(err).split())
        warnings.warn(f"resdyn: the native ResNet could not be built ({_failure}); the two-layer "
                      "ResNet runs on the torch path, two to three times slower. Install a C "
                      "compiler or set CC to one.", RuntimeWarning, stacklevel=3)
        return None


def _load(path: Path, dtype: torch.dtype, widths: tuple[int, int, int, int],
          fd: int | None = None) -> NativeResNet:
    """The library at ``path``; with ``fd`` (its checked open descriptor), loaded through that
    descriptor where the system offers ``/proc/self/fd``."""
    source = f"/proc/self/fd/{fd}" if fd is not None and os.path.isdir("/proc/self/fd") else str(path)
    lib = ctypes.CDLL(source)
    lib.rs_forward.argtypes = [_I, _I, _I, _I, _D, _I, _D] + [_P] * 10 + [_I]
    lib.rs_forward.restype = _I
    lib.rs_backward.argtypes = [_I, _I, _I, _I, _D, _I, _D] + [_P] * 18 + [_I]
    lib.rs_backward.restype = _I
    shape = (ctypes.c_int * 5)()
    lib.rs_shape(shape)
    expected = (torch.empty((), dtype=dtype).element_size(), *widths)
    if tuple(shape) != expected:
        raise RuntimeError(f"{path} was built for (bytes, d, m, p, k) = {tuple(shape)}, not "
                           f"{expected}")
    return NativeResNet(lib, widths)


class _NativeResNet(torch.autograd.Function):
    """The whole two-layer ResNet through the C kernel: only x and the weights are saved; the
    backward runs each chunk's forward again into a cache-sized buffer (csrc/resnet.c).

    Differentiating twice (``create_graph=True``, e.g. a gradient penalty) takes the gradient
    through autograd instead (:func:`_autograd_backward`): the kernel's backward is not itself
    differentiable, and a gradient without a graph would drop the penalty's term in silence."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, owner: Tensor, A: Tensor, c: Tensor, W: Tensor, b: Tensor,
                V: Tensor, R: Tensor, r: Tensor, h: float, act: Activation,
                lib: NativeResNet) -> Tensor:
        ctx.h, ctx.act, ctx.lib = h, act, lib
        # The tensors as given (not contiguous copies): a double backward differentiates them.
        ctx.save_for_backward(x, owner, A, c, W, b, V, R, r)
        weights = tuple(t.contiguous() for t in (A, c, W, b, V, R, r))
        return lib.forward(x.contiguous(), owner.contiguous(), weights, h, activation_code(act),
                           act.tau)

    @staticmethod
    def backward(ctx: Any, e: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph=True: the gradient needs its own graph
            return _autograd_backward(ctx, e)
        x, owner, *weights = (t.contiguous() for t in ctx.saved_tensors)
        gx, *grads = ctx.lib.backward(x, owner, tuple(weights), ctx.h,
                                      activation_code(ctx.act), ctx.act.tau,
                                      e.contiguous(), ctx.needs_input_grad[0])
        return (gx, None, *grads, None, None, None)


def _autograd_backward(ctx: Any, e: Tensor) -> tuple[Tensor | None, ...]:
    """The gradients of :class:`_NativeResNet` with a graph: the same network recomputed op by
    op (the torch recursion, weights gathered per chunk) and differentiated by autograd."""
    from .fused import forward_stack

    x, owner, *weights = ctx.saved_tensors
    with torch.enable_grad():
        A, c, W, b, V, R, r = (w.index_select(0, owner) for w in weights)
        z = torch.baddbmm(c.unsqueeze(1), x, A.transpose(1, 2))
        z = forward_stack(z, W, b, V, ctx.h, ctx.act, keep=False)[0]
        out = torch.baddbmm(r.unsqueeze(1), z, R.transpose(1, 2))
    inputs = (x, *weights)
    wanted = [i for i, need in enumerate((ctx.needs_input_grad[0], *ctx.needs_input_grad[2:9]))
              if need]
    grads = torch.autograd.grad(out, [inputs[i] for i in wanted], e, create_graph=True,
                                allow_unused=True)
    full: list[Tensor | None] = [None] * len(inputs)
    for i, g in zip(wanted, grads, strict=True):
        full[i] = g
    return (full[0], None, *full[1:], None, None, None)


def _check_devices(x: Tensor, params: dict[str, Tensor]) -> None:
    """A ``ValueError`` for an input that no path computes: a device other than the CPU or a
    GPU (the meta device has no values), or weights on another device than ``x``."""
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"the ResNet computes on 'cpu' or 'cuda', not on {x.device} (a meta "
                         "tensor has no values); move x and the parameters to one of them")
    for name in _NAMES:
        if params[name].device != x.device:
            raise ValueError(f"x is on {x.device} but parameter {name!r} is on "
                             f"{params[name].device}; move both to one device")


_NAMES = ("A", "c", "W", "b", "V", "R", "r")


def _shapes(params: dict[str, Tensor], x: Tensor, owner: Tensor) -> tuple[int, ...] | None:
    """(d, m, p, k) when x (B, n, d), owner (B,) and the weights (module docstring of
    NativeResNet) fit together, else None: the kernel reads raw memory by these sizes."""
    A, W = params["A"], params["W"]
    if x.dim() != 3 or A.dim() != 3 or W.dim() != 4 or owner.shape != (x.shape[0],):
        return None
    E, m, d = A.shape
    L, p = W.shape[1], W.shape[2]
    k = params["R"].shape[1] if params["R"].dim() == 3 else -1
    expected = {"c": (E, m), "W": (E, L, p, m), "b": (E, L, p), "V": (E, L, m, p), "R": (E, k, m),
                "r": (E, k)}
    if x.shape[2] != d or any(tuple(params[n].shape) != s for n, s in expected.items()):
        return None
    return d, m, p, k


def native_resnet(params: dict[str, Tensor], x: Tensor, h: float, act: Activation,
                  owner: Tensor | None = None) -> Tensor | None:
    """Outputs (B, n, k) of the untied two-layer ResNet (z_0 = A x + c, the stack of
    :mod:`resdyn.models.fused`, f = R z_L + r) through the C kernel, or None where that does not
    apply (not on the CPU, a dtype or activation it lacks, inside a torch.func transform,
    shapes that do not fit together, or no kernel built): the torch path then runs, and raises
    its own error for a misshapen input. ``owner`` (B,): the network of ``params`` (leading axis
    E) that runs chunk b of ``x``; None: network b, E = B. The gradient of a network sums its
    chunks' in chunk order. An input on the meta device (or any but the CPU or a GPU), or with
    weights on another device, is a ``ValueError`` on every path."""
    _check_devices(x, params)
    tensors = (x, *(params[k] for k in _NAMES))
    if x.device.type != "cpu" or activation_code(act) is None:
        return None
    if any(t.dtype != x.dtype or t.device != x.device or transformed(t) for t in tensors):
        return None
    if owner is None:
        owner = torch.arange(x.shape[0])
    shapes = _shapes(params, x, owner)
    if shapes is None:
        return None
    lib = resnet_library(x.dtype, *shapes)
    if lib is None:
        return None
    # Without a graph (evaluation, torch.no_grad) apply builds none: the same call either way.
    return _NativeResNet.apply(x, owner.to(torch.int64), *tensors[1:], h, act, lib)
