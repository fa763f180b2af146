"""The two-layer ResNet as its definition reads: the one recursion the fast paths are tested against.

For one network with input x in R^d, state width m, hidden width p, output size k, L layers and
step h (h = T / L for horizon T):

    z_0     = A x + c,                                  A (m, d), c (m)
    z_{l+1} = z_l + h V_l act(W_l z_l + b_l),           W_l (p, m), b_l (p), V_l (m, p),
                                                        l = 0..L-1
    f(x)    = R z_L + r,                                R (k, m), r (k).

Here every tensor carries a leading axis B (networks, or chunks of rows that share one network's
weights) and rows are the samples: x (B, n, d), A (B, m, d), c (B, m), W (B, L, p, m),
b (B, L, p), V (B, L, m, p), R (B, k, m), r (B, k), f (B, n, k); a row vector z of width m is
mapped by z -> z W^T. Each step is written as the formula reads, one layer at a time, and its
gradients are autograd's.

The fast paths compute the same function: ``ResNet.forward`` on the CPU through the C kernel
(:mod:`resdyn.models.native`), elsewhere through the fused stack with its hand-written backward
(:mod:`resdyn.models.fused`); ``KnotResNet.forward`` with layer weights interpolated between
knots. ``tests/test_reference.py`` checks each against :func:`reference_resnet`, values and
gradients. :func:`residual_layer` is also the two-layer residual map of
:func:`resdyn.models.blocks.residual_map`, so the autograd forward of the model families is this
code.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .activations import Activation

__all__ = ["embed_rows", "readout_rows", "reference_resnet", "reference_stack", "residual_layer"]


def embed_rows(A: Tensor, c: Tensor, x: Tensor) -> Tensor:
    """z_0 = A x + c for every row of x (B, n, d): (B, n, m)."""
    return torch.baddbmm(c.unsqueeze(1), x, A.transpose(1, 2))


def residual_layer(z: Tensor, W: Tensor, b: Tensor, V: Tensor, act: Activation) -> Tensor:
    """F(z) = V act(W z + b) for every row of z (B, n, m), one layer's W (B, p, m), b (B, p),
    V (B, m, p): (B, n, m)."""
    u = torch.baddbmm(b.unsqueeze(1), z, W.transpose(1, 2))
    return torch.bmm(act(u), V.transpose(1, 2))


def reference_stack(z: Tensor, W: Tensor, b: Tensor, V: Tensor, h: float,
                    act: Activation) -> Tensor:
    """z_L from z_0 (B, n, m): z_{l+1} = z_l + h F_l(z_l) for the L layers of W (B, L, p, m),
    b (B, L, p), V (B, L, m, p)."""
    for W_l, b_l, V_l in zip(W.unbind(1), b.unbind(1), V.unbind(1), strict=True):
        z = z + h * residual_layer(z, W_l, b_l, V_l, act)
    return z


def readout_rows(R: Tensor, r: Tensor, z: Tensor) -> Tensor:
    """f = R z + r for every row of z (B, n, m): (B, n, k)."""
    return torch.baddbmm(r.unsqueeze(1), z, R.transpose(1, 2))


def reference_resnet(params: dict[str, Tensor], x: Tensor, h: float, act: Activation) -> Tensor:
    """f(x) (B, n, k) of the untied two-layer ResNet (module docstring) with weights ``params``
    (A, c, W, b, V, R, r) for inputs x (B, n, d)."""
    z = embed_rows(params["A"], params["c"], x)
    z = reference_stack(z, params["W"], params["b"], params["V"], h, act)
    return readout_rows(params["R"], params["r"], z)
