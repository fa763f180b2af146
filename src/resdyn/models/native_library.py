"""A loaded library of the native ResNet kernel (csrc/resnet.c) through ctypes: loading it from its
checked open descriptor, checking the layout of its entry points (:data:`ABI`), and calling its
forward and backward on torch tensors. :mod:`resdyn.models.native_build` says which file is
loaded; :func:`say_once` gives the kernel's warnings, once per process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["ABI", "NativeResNet", "OpenedLibrary", "load_library", "say_once"]

#: The layout of the entry points (``RS_ABI`` in csrc/resnet.c); a library of another is rebuilt.
ABI = 2

_said: set[str] = set()  # warnings given once per process

_P = ctypes.c_void_p
_I = ctypes.c_int
_D = ctypes.c_double


@dataclass(frozen=True)
class NativeResNet:
    """A loaded library for one (dtype, NV). Arrays are contiguous CPU tensors of that dtype:
    inputs x (B, n, d) in B chunks, chunk c run by network owner[c] (int64, (B,)) of the E whose
    weights are A (E, m, d), c (E, m), W (E, L, p, m), b (E, L, p), V (E, L, m, p), R (E, k, m),
    r (E, k)."""

    lib: ctypes.CDLL
    dtype: torch.dtype
    vectors: int
    path: Path
    sha256: str
    openmp: bool

    def forward(self, x: Tensor, owner: Tensor, weights: tuple[Tensor, ...], h: float, act: int,
                tau: float) -> Tensor:
        """f (B, n, k) for the weights (A, c, W, b, V, R, r)."""
        B, n, d = x.shape
        E, L, p, m = weights[2].shape
        k = weights[5].shape[1]
        out = x.new_empty((B, n, k))
        _check(self.lib.rs_forward(B, E, n, L, d, m, p, k, h, act, tau, owner.data_ptr(),
                                   x.data_ptr(), *(w.data_ptr() for w in weights), out.data_ptr(),
                                   torch.get_num_threads()))
        return out

    def backward(self, x: Tensor, owner: Tensor, weights: tuple[Tensor, ...], h: float, act: int,
                 tau: float, e: Tensor, want_x: bool) -> tuple[Tensor | None, ...]:
        """(dJ/dx or None, dJ/dA, dJ/dc, ..., dJ/dr) from e = dJ/df (B, n, k); a network's
        gradient is the sum of its chunks' in chunk order."""
        B, n, d = x.shape
        E, L, p, m = weights[2].shape
        k = weights[5].shape[1]
        grads = [torch.empty_like(w) for w in weights]
        gx = torch.empty_like(x) if want_x else None
        _check(self.lib.rs_backward(B, E, n, L, d, m, p, k, h, act, tau, owner.data_ptr(),
                                    x.data_ptr(), *(w.data_ptr() for w in weights), e.data_ptr(),
                                    *(g.data_ptr() for g in grads),
                                    None if gx is None else gx.data_ptr(),
                                    torch.get_num_threads()))
        return (gx, *grads)


def _check(status: int) -> None:
    if status == 2:
        raise ValueError("native ResNet: a chunk's owner is outside [0, E) for E networks")
    if status == 3:
        raise ValueError("native ResNet: a width is zero or wider than this library's vectors")
    if status:
        raise MemoryError("native ResNet: could not allocate its buffers")


def say_once(message: str, stacklevel: int = 3) -> None:
    """One RuntimeWarning per distinct message and process."""
    if message not in _said:
        _said.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)


@dataclass(frozen=True)
class OpenedLibrary:
    """A trusted library file: its open descriptor, its sha256, and, when it was built here
    without OpenMP, the compiler's complaint about -fopenmp."""

    fd: int
    sha256: str
    no_openmp: str | None = None


def load_library(path: Path, dtype: torch.dtype, nv: int, opened: OpenedLibrary) -> NativeResNet:
    """The library at ``path`` through its checked open descriptor (where the system offers
    ``/proc/self/fd``). The descriptor stays open while the process lives (the library stays
    loaded too): the loader knows a library by its name, and a reused /proc/self/fd/N would name
    an earlier one."""
    fd = opened.fd
    source = f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else str(path)
    lib = ctypes.CDLL(source)
    info = (ctypes.c_int * 4)()
    lib.rs_info(info)
    expected = (torch.empty((), dtype=dtype).element_size(), nv, ABI)
    if tuple(info)[:3] != expected:
        raise RuntimeError(f"{path} was built for (bytes, NV, ABI) = {tuple(info)[:3]}, not "
                           f"{expected}")
    lib.rs_forward.argtypes = [_I] * 8 + [_D, _I, _D] + [_P] * 10 + [_I]
    lib.rs_forward.restype = _I
    lib.rs_backward.argtypes = [_I] * 8 + [_D, _I, _D] + [_P] * 18 + [_I]
    lib.rs_backward.restype = _I
    if not info[3]:
        why = opened.no_openmp or "so it was found in the cache"
        say_once(f"resdyn: the native ResNet library {path.name} is built without OpenMP "
                 f"({why}); the kernel runs on one thread", stacklevel=5)
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: the cache's pruning keeps it
    return NativeResNet(lib, dtype, nv, path, opened.sha256, bool(info[3]))
