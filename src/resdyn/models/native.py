"""The native two-layer ResNet: ``csrc/resnet.c`` as a torch custom op on the CPU.

A two-layer residual layer of width m and hidden width p costs 2 m p multiply-adds per row
forward and 4 m p backward; as batched matrix products of (64 x 16) by (16 x 16) blocks the CPU
build of torch runs them at a fraction of the machine's speed, and the activation, the residual
add, the embedding, the readout and the per-chunk gradient sums are separate passes over memory.
The C kernel takes a chunk of rows from input to output (and back) with a row in vector
registers, and its backward reads the chunk's layers from cache (docs/engine.md, "Native
ResNet"). It computes the recursion of :mod:`resdyn.models.reference`,

    z_0 = A x + c,   z_{k+1} = z_k + h V_k act(W_k z_k + b_k),   f = R z_L + r,

and its gradient (the formulas are in csrc/resnet.c).

**Modules.** This module is the kernel's public face: the torch custom op, the model's entry point
:func:`native_resnet` and :func:`provenance`, with the names of the others.
:mod:`resdyn.models.native_build` says which library runs a network and builds, caches and loads
it (``python -m resdyn.models.native build`` builds them all); :mod:`resdyn.models.native_trust`
says whether a cached file may be loaded; :mod:`resdyn.models.native_library` is a loaded
library's ctypes wrapper.

**Torch.** The kernel is the custom op ``torch.ops.resdyn.native_resnet`` with its backward
``torch.ops.resdyn.native_resnet_backward``, registered with ``torch.library.custom_op``, an
autograd formula (:func:`torch.library.register_autograd`) and fake kernels, so torch.compile
traces through it in one graph (``fullgraph=True``, forward and backward). torch.func transforms
(jacrev, vmap, grad) run the torch path instead: torch refuses a custom op's autograd formula
under functorch, and the kernel has no batching rule. A second derivative
(``create_graph=True``, e.g. a gradient penalty) is taken by autograd through the reference
recursion recomputed op by op: the C backward is not itself differentiable, and a gradient
without a graph would drop the penalty's term in silence.

**Provenance.** :func:`provenance` says whether the kernel ran in this process since
:func:`reset_usage`, which libraries (sha256) ran, and the compiler and CPU flags of their key.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from torch import Tensor

from .activations import Activation, get_activation
from .fused import transformed
from .native_build import (
    MAX_CACHED,
    MAX_IO,
    MAX_WIDTH,
    build_all,
    cache_dir,
    compiler,
    enabled,
    loaded_libraries,
    main,
    resnet_library,
    supported,
    toolchain,
    vectors_for,
)
from .native_library import NativeResNet
from .native_trust import UntrustedError
from .reference import reference_resnet

if __name__ == "__main__":
    # ``python -m resdyn.models.native build``: the package has already imported this module (and
    # registered its ops); run that copy's command rather than register them twice.
    raise SystemExit(sys.modules[__spec__.name].main(sys.argv[1:]))

__all__ = ["ACT_CODES", "MAX_CACHED", "MAX_IO", "MAX_WIDTH", "NativeResNet", "UntrustedError",
           "activation_code", "build_all", "cache_dir", "enabled", "main", "native_resnet",
           "native_resnet_backward_op", "native_resnet_op", "provenance", "reset_usage",
           "resnet_library", "supported", "vectors_for"]

#: Activations the kernel computes, by name, with their code in csrc/resnet.c.
ACT_CODES = {"tanh": 0, "relu": 1, "soft_threshold": 2, "shifted_relu": 3}
_ACT_NAMES = {code: name for name, code in ACT_CODES.items()}
_used: dict[str, str] = {}  # libraries that ran since reset_usage(): file name -> sha256


def activation_code(act: Activation) -> int | None:
    """The kernel's code for ``act``, or None when the kernel does not compute it."""
    return ACT_CODES.get(act.name)


@torch.compiler.assume_constant_result
def _available(dtype: torch.dtype, d: int, m: int, p: int, k: int) -> bool:
    """Whether a library for these widths is loaded (built now if need be). torch.compile takes
    the answer as a constant of the graph instead of tracing the build."""
    return resnet_library(dtype, d, m, p, k) is not None


# -- provenance -----------------------------------------------------------------------------------

def reset_usage() -> None:
    """Forget which libraries ran: :func:`provenance` then reports the kernel as not run until
    it runs again."""
    _used.clear()


def provenance() -> dict[str, Any]:
    """What ran the two-layer ResNet in this process since :func:`reset_usage`:

    ``native_kernel`` (bool: the C kernel ran, forward or backward), ``libraries`` (file name ->
    sha256 of each library that ran), ``library_sha256`` (their sha256s, sorted), ``enabled``
    (``RESDYN_NATIVE``), ``compiler`` (its path, or None), ``compiler_version`` (the first line
    of ``--version``), ``cpu_flags`` (this CPU's feature flags, part of the build key), ``openmp``
    (whether every library that ran has threads; None when none ran)."""
    cc = compiler()
    version, cpu = toolchain(cc) if cc else ("", "")
    loaded = {lib.path.name: lib for lib in loaded_libraries()}
    ran = [loaded[name] for name in _used if name in loaded]
    return {
        "native_kernel": bool(_used),
        "libraries": dict(sorted(_used.items())),
        "library_sha256": sorted(set(_used.values())),
        "enabled": enabled(),
        "compiler": cc,
        "compiler_version": version.splitlines()[0] if version else None,
        "cpu_flags": cpu.split(":", 1)[-1].strip() if cpu else None,
        "openmp": all(lib.openmp for lib in ran) if ran else None,
    }


def _ran(lib: NativeResNet) -> None:
    _used[lib.path.name] = lib.sha256


# -- the custom op --------------------------------------------------------------------------------

_NAMES = ("A", "c", "W", "b", "V", "R", "r")


def _library_for(x: Tensor, W: Tensor, R: Tensor) -> NativeResNet:
    p, m = W.shape[2], W.shape[3]
    lib = resnet_library(x.dtype, x.shape[2], m, p, R.shape[1])
    if lib is None:
        raise RuntimeError("resdyn::native_resnet: no native library for "
                           f"{x.dtype}, d={x.shape[2]}, m={m}, p={p}, k={R.shape[1]} "
                           f"(RESDYN_NATIVE={os.environ.get('RESDYN_NATIVE', '1')}); call "
                           "native_resnet(), which falls back to the torch path")
    return lib


@torch.library.custom_op("resdyn::native_resnet", mutates_args=(), device_types="cpu")
def native_resnet_op(x: Tensor, owner: Tensor, A: Tensor, c: Tensor, W: Tensor, b: Tensor,
                     V: Tensor, R: Tensor, r: Tensor, h: float, act: int, tau: float) -> Tensor:
    """f (B, n, k): chunk b of x (B, n, d) through network owner[b] (see :class:`NativeResNet`)
    with step h and activation code ``act`` (:data:`ACT_CODES`) of threshold tau."""
    lib = _library_for(x, W, R)
    weights = tuple(t.contiguous() for t in (A, c, W, b, V, R, r))
    out = lib.forward(x.contiguous(), owner.contiguous(), weights, h, act, tau)
    _ran(lib)
    return out


@native_resnet_op.register_fake
def _native_resnet_fake(x: Tensor, owner: Tensor, A: Tensor, c: Tensor, W: Tensor, b: Tensor,
                        V: Tensor, R: Tensor, r: Tensor, h: float, act: int, tau: float) -> Tensor:
    return x.new_empty((x.shape[0], x.shape[1], R.shape[1]))


@torch.library.custom_op("resdyn::native_resnet_backward", mutates_args=(), device_types="cpu")
def native_resnet_backward_op(x: Tensor, owner: Tensor, A: Tensor, c: Tensor, W: Tensor,
                              b: Tensor, V: Tensor, R: Tensor, r: Tensor, e: Tensor, h: float,
                              act: int, tau: float, want_x: bool) -> list[Tensor]:
    """[dJ/dx (empty (0,) unless want_x), dJ/dA, dJ/dc, dJ/dW, dJ/db, dJ/dV, dJ/dR, dJ/dr] of
    :func:`native_resnet_op` for e = dJ/df; a network's gradient sums its chunks' in chunk
    order."""
    lib = _library_for(x, W, R)
    weights = tuple(t.contiguous() for t in (A, c, W, b, V, R, r))
    gx, *grads = lib.backward(x.contiguous(), owner.contiguous(), weights, h, act, tau,
                              e.contiguous(), want_x)
    _ran(lib)
    return [x.new_empty(0) if gx is None else gx, *grads]


@native_resnet_backward_op.register_fake
def _native_resnet_backward_fake(x: Tensor, owner: Tensor, A: Tensor, c: Tensor, W: Tensor,
                                 b: Tensor, V: Tensor, R: Tensor, r: Tensor, e: Tensor, h: float,
                                 act: int, tau: float, want_x: bool) -> list[Tensor]:
    gx = torch.empty_like(x) if want_x else x.new_empty(0)
    return [gx, *(torch.empty_like(t) for t in (A, c, W, b, V, R, r))]


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, owner, A, c, W, b, V, R, r, h, act, tau = inputs
    # The tensors as given (not contiguous copies): a double backward differentiates them.
    ctx.save_for_backward(x, owner, A, c, W, b, V, R, r)
    ctx.h, ctx.act, ctx.tau = h, act, tau


def _backward(ctx: Any, e: Tensor) -> tuple[Tensor | None, ...]:
    """The kernel's gradient; with ``create_graph=True`` (a gradient penalty) autograd's through
    the reference recursion (:func:`_graph_backward`), since the kernel's is not differentiable."""
    if torch.is_grad_enabled():
        return _graph_backward(ctx, e)
    x, owner, *weights = ctx.saved_tensors
    want_x = bool(ctx.needs_input_grad[0])
    gx, *grads = native_resnet_backward_op(x, owner, *weights, e, ctx.h, ctx.act, ctx.tau, want_x)
    return (gx if want_x else None, None, *grads, None, None, None)


def _graph_backward(ctx: Any, e: Tensor) -> tuple[Tensor | None, ...]:
    """The gradients of :func:`native_resnet_op` with a graph: the reference recursion, weights
    gathered per chunk, differentiated by autograd."""
    x, owner, *weights = ctx.saved_tensors
    act = get_activation(_ACT_NAMES[ctx.act], tau=ctx.tau)
    with torch.enable_grad():
        params = {n: w.index_select(0, owner) for n, w in zip(_NAMES, weights, strict=True)}
        out = reference_resnet(params, x, ctx.h, act)
    inputs = (x, *weights)
    wanted = [i for i, need in enumerate((ctx.needs_input_grad[0], *ctx.needs_input_grad[2:9]))
              if need]
    grads = torch.autograd.grad(out, [inputs[i] for i in wanted], e, create_graph=True,
                                allow_unused=True)
    full: list[Tensor | None] = [None] * len(inputs)
    for i, g in zip(wanted, grads, strict=True):
        full[i] = g
    return (full[0], None, *full[1:], None, None, None)


native_resnet_op.register_autograd(_backward, setup_context=_setup_context)


# -- the model's entry point ----------------------------------------------------------------------

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


def _shapes(params: dict[str, Tensor], x: Tensor, owner: Tensor) -> tuple[int, ...] | None:
    """(d, m, p, k) when x (B, n, d), owner (B,) and the weights (:class:`NativeResNet`) fit
    together, else None: the kernel reads raw memory by these sizes."""
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
    """Outputs (B, n, k) of the untied two-layer ResNet (:mod:`resdyn.models.reference`) through
    the C kernel, or None where that does not apply (not on the CPU, a dtype or activation it
    lacks, inside a torch.func transform (jacrev's vmap has no batching rule for the kernel),
    shapes that do not fit together, or no library): the torch path then runs, and raises its own
    error for a misshapen input. ``owner`` (B,): the network of ``params`` (leading axis E) that
    runs chunk b of ``x``; None: network b, E = B. The gradient of a network sums its chunks' in
    chunk order. An input on the meta device (or any but the CPU or a GPU), or with weights on
    another device, is a ``ValueError`` on every path."""
    _check_devices(x, params)
    tensors = (x, *(params[k] for k in _NAMES))
    code = activation_code(act)
    if x.device.type != "cpu" or code is None:
        return None
    if any(t.dtype != x.dtype or t.device != x.device for t in tensors):
        return None
    # torch.func wrappers: the custom op has no functorch rule (torch refuses its autograd
    # formula under grad/vjp, and vmap has no batching rule), so the torch path runs. Under
    # torch.compile the check is skipped: dynamo cannot trace it, and traces the op itself.
    if not torch.compiler.is_compiling() and any(transformed(t) for t in tensors):
        return None
    if owner is None:
        owner = torch.arange(x.shape[0])
    shapes = _shapes(params, x, owner)
    if shapes is None or not supported(x.dtype, *shapes) or not _available(x.dtype, *shapes):
        return None
    # Without a graph (evaluation, torch.no_grad) no autograd node is built: the same call.
    return native_resnet_op(x, owner.to(torch.int64), *tensors[1:], float(h), code,
                            float(act.tau))
