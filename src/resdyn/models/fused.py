"""The two-layer residual stack as one autograd node with a hand-written backward.

For chunks b = 1..B of n rows each, state z_0 (B, n, m) and layer weights W (B, L, p, m),
b (B, L, p), V (B, L, m, p), the stack computes (docs/engine.md, "Fused residual stack (torch
path)")

    u_k = z_k W_k^T + b_k,   a_k = act(u_k),   z_{k+1} = z_k + h a_k V_k^T,   k = 0..L-1,

and, given g_L = dJ/dz_L, its backward runs k = L-1..0:

    dJ/dV_k = h g_{k+1}^T a_k,      gu_k = act'(u_k) * (g_{k+1} V_k)     (act' read from a_k),
    dJ/dW_k = h gu_k^T z_k,         dJ/db_k = h sum_rows gu_k,
    g_k     = g_{k+1} + h gu_k W_k.

Autograd builds the same products from about a dozen nodes per layer (a scale, an add, the
transpose views, an unbind of every weight stack and its ``stack`` backward); here a layer is
three kernels forward (two fused multiply-adds and the activation) and six backward, with the
residual add and the factor h folded into ``baddbmm``. Every product is per chunk and the row sums
stay within a chunk, so a chunk's numbers do not depend on the other chunks (the engine's batch
invariance). Used only where an activation states its derivative from its output
(``Activation.grad_from_output``) and outside torch.func transforms (which need the autograd
graph); elsewhere :func:`residual_stack` runs the same recursion through autograd. The recursion
is that of :mod:`resdyn.models.reference` (tests/test_reference.py checks values and gradients
against it); a second derivative is autograd's through :func:`reference_stack`.

On the CPU, :func:`resdyn.models.native.native_resnet` runs the whole network (embedding, stack,
readout) through a C kernel instead, where one is built; this module is then the path of CUDA
and of machines without a C compiler.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .activations import Activation
from .reference import reference_stack

__all__ = ["forward_stack", "residual_stack"]


def forward_stack(z: Tensor, W: Tensor, b: Tensor, V: Tensor, h: float, act: Activation,
                  keep: bool) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """z_{k+1} = z_k + h V_k act(W_k z_k + b_k) over the L layers of (E, L, ...) stacks; with
    ``keep`` also every z_k and act(.) (what the hand-written backward reads)."""
    zs, acts = [], []
    for k in range(W.shape[1]):
        a = act(torch.baddbmm(b[:, k].unsqueeze(1), z, W[:, k].transpose(1, 2)))
        if keep:
            zs.append(z)
            acts.append(a)
        z = torch.baddbmm(z, a, V[:, k].transpose(1, 2), alpha=h)
    return z, zs, acts


class _Stack(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: Tensor, W: Tensor, b: Tensor, V: Tensor, h: float,
                act: Activation) -> Tensor:
        out, zs, acts = forward_stack(z, W, b, V, h, act, keep=True)
        ctx.h, ctx.act, ctx.L = h, act, W.shape[1]
        ctx.save_for_backward(W, b, V, *zs, *acts)  # zs[0] is z itself
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        W, b, V, *saved = ctx.saved_tensors
        L, h, act = ctx.L, ctx.h, ctx.act
        zs, acts = saved[:L], saved[L:]
        if torch.is_grad_enabled():  # create_graph=True (a gradient penalty): autograd's gradient
            return _autograd_backward(ctx, zs[0], W, b, V, g)
        B, p, m = W.shape[0], W.shape[2], W.shape[3]
        # Layer-major buffers: every layer's slice is contiguous, so the products write in place.
        gW = g.new_empty((L, B, p, m))
        gb = g.new_empty((L, B, p))
        gV = g.new_empty((L, B, m, p))
        g = g.clone()  # autograd's tensor; ours from here on, updated in place
        for k in reversed(range(L)):
            a = acts[k]
            torch.bmm(g.transpose(1, 2), a, out=gV[k])
            gu = act.grad_from_output(torch.bmm(g, V[:, k]), a)
            torch.bmm(gu.transpose(1, 2), zs[k], out=gW[k])
            torch.sum(gu, 1, out=gb[k])
            g.baddbmm_(gu, W[:, k], alpha=h)
        # Model-major and contiguous again: the engine's index_add back to the models is ten times
        # slower on a strided source than this one copy.
        gW, gb, gV = (t.mul_(h).transpose(0, 1).contiguous() for t in (gW, gb, gV))
        return g, gW, gb, gV, None, None


def _autograd_backward(ctx: Any, z: Tensor, W: Tensor, b: Tensor, V: Tensor, g: Tensor
                       ) -> tuple[Tensor | None, ...]:
    """The gradients of :class:`_Stack` with a graph of their own: the reference recursion
    recomputed op by op and differentiated by autograd. The hand-written backward writes into
    buffers in place and is not itself differentiable; a second derivative through it would be
    wrong or fail."""
    inputs = (z, W, b, V)
    wanted = [i for i, need in enumerate(ctx.needs_input_grad[:4]) if need]
    with torch.enable_grad():
        out = reference_stack(z, W, b, V, ctx.h, ctx.act)
    grads = torch.autograd.grad(out, [inputs[i] for i in wanted], g, create_graph=True,
                                allow_unused=True)
    full: list[Tensor | None] = [None] * 4
    for i, gi in zip(wanted, grads, strict=True):
        full[i] = gi
    return (*full, None, None)


def transformed(t: Tensor) -> bool:
    """Whether ``t`` is a torch.func wrapper (jacrev, vmap, ...), which a Function with a
    hand-written, in-place backward does not support."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(t))


def residual_stack(z: Tensor, W: Tensor, b: Tensor, V: Tensor, h: float, act: Activation) -> Tensor:
    """z_L of the two-layer stack (module docstring) from z_0 (B, n, m) and the untied layer
    weights W (B, L, p, m), b (B, L, p), V (B, L, m, p)."""
    tensors = (z, W, b, V)
    fused = (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
             and act.grad_from_output is not None and not any(transformed(t) for t in tensors))
    if fused:
        return _Stack.apply(z, W, b, V, h, act)
    # No graph needed, or one autograd must build itself: the same recursion, op by op.
    return forward_stack(z, W, b, V, h, act, keep=False)[0]
