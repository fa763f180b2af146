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
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
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
        target = cache_dir() / f"resnet_{_DTYPES[dtype]}_{shape}_{digest}.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            # Built beside the target and renamed into place: processes building the same
            # library at once each rename a complete file.
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
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return _load(target, dtype, widths)
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        _failure = str(err)
        warnings.warn(f"resdyn: the native ResNet could not be built ({_failure}); the two-layer "
                      "ResNet runs on the torch path, two to three times slower. Install a C "
                      "compiler or set CC to one.", RuntimeWarning, stacklevel=3)
        return None


def _load(path: Path, dtype: torch.dtype, widths: tuple[int, int, int, int]) -> NativeResNet:
    lib = ctypes.CDLL(str(path))
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
    backward runs each chunk's forward again into a cache-sized buffer (csrc/resnet.c)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, owner: Tensor, A: Tensor, c: Tensor, W: Tensor, b: Tensor,
                V: Tensor, R: Tensor, r: Tensor, h: float, act: Activation,
                lib: NativeResNet) -> Tensor:
        x, *weights = (t.contiguous() for t in (x, A, c, W, b, V, R, r))
        owner = owner.contiguous()
        ctx.h, ctx.act, ctx.lib = h, act, lib
        ctx.save_for_backward(x, owner, *weights)
        return lib.forward(x, owner, tuple(weights), h, activation_code(act), act.tau)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, e: Tensor) -> tuple[Tensor | None, ...]:
        x, owner, *weights = ctx.saved_tensors
        gx, *grads = ctx.lib.backward(x, owner, tuple(weights), ctx.h,
                                      activation_code(ctx.act), ctx.act.tau,
                                      e.contiguous(), ctx.needs_input_grad[0])
        return (gx, None, *grads, None, None, None)


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
    chunks' in chunk order."""
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
