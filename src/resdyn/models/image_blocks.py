"""Pieces of the staged image ResNets (``image_resnet``, ``image_ode_resnet``): stem, residual
field, transitions and readout, every one batched over a leading model axis B.

The network is the first paper's residual dynamics on a fixed-size image state, framed by
non-residual maps that change the shape:

    z_0 = E(x)                                   stem: 3x3 conv, then D stride-2 4x4 convs
    stage s = 0..S-1 (state C_s = C 2^s channels at (H / 2^(D+s))^2 pixels):
        dz/dt = F_s(z; theta_s(t)),  t in [0, T]           (ODE, or its Euler steps h = T / L)
        F_s(z; W, b, V) = conv3x3(V, act(conv3x3(W, z) + b))
        z <- conv4x4/2(Q_s, z) + q_s  between stages (doubles C, halves the resolution)
    output = R pool_G(z) + r                     pool_G: adaptive average pooling to a G x G grid,
                                                 flattened (G = 1: the mean over pixels)

The stem's hidden convolutions are followed by ``stem_activation``; its last convolution is a
linear embedding, so that z_0 carries both signs like every other family's A x + c. No
normalisation layer anywhere: the residual map F is the Lipschitz map the bounds assume, and a
normalisation would make the vector field depend on the batch (docs/models.md).

Layout: a convolution of model b reads channels [b C_in, (b+1) C_in) of a state (n, B C_in, H, W)
and is one grouped convolution over all models, so each model's arithmetic is that of the
model alone (tests/test_image_resnet.py checks this bitwise). Weights are stored in torch's own
shape with the model axis in front: (B, C_out, C_in, k, k); residual weights carry a layer (or
knot) axis after it: (B, L, C, C, 3, 3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .activations import Activation
from .base import Params

__all__ = ["conv", "field", "image_state", "init_conv", "pool_readout", "stem", "stem_shapes",
           "transition"]


def conv(z: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int = 1) -> Tensor:
    """Per-model convolution as one grouped convolution.

    z: (n, B C_in, H, W); weight: (B, C_out, C_in, k, k); bias: (B, C_out). Padding k // 2 for odd
    k (size kept) and 1 for the 4x4 stride-2 kernels (size halved). Returns (n, B C_out, H', W').
    """
    B, o, i, k, _ = weight.shape
    b = None if bias is None else bias.reshape(B * o)
    pad = k // 2 if k % 2 else 1
    return F.conv2d(z, weight.reshape(B * o, i, k, k), b, stride=stride, padding=pad, groups=B)


def stem_shapes(in_channels: int, stem_channels: int, channels: int, downsample: int
                ) -> list[tuple[int, int, int, int]]:
    """(C_in, C_out, kernel, stride) of each stem convolution: a 3x3 convolution at full
    resolution, then ``downsample`` 4x4 stride-2 convolutions; the last one outputs ``channels``."""
    if downsample == 0:
        return [(in_channels, channels, 3, 1)]
    shapes = [(in_channels, stem_channels, 3, 1)]
    shapes += [(stem_channels, stem_channels, 4, 2)] * (downsample - 1)
    return [*shapes, (stem_channels, channels, 4, 2)]


def init_conv(g: torch.Generator, c_out: int, c_in: int, k: int, gain: float = math.sqrt(2.0)
              ) -> Tensor:
    """He-normal filters (std gain / sqrt(C_in k^2)), float64, no model axis."""
    return torch.randn(c_out, c_in, k, k, generator=g, dtype=torch.float64) * (gain / math.sqrt(c_in * k * k))


def image_state(x: Tensor) -> Tensor:
    """Inputs (B, n, c, H, W) as the stacked state (n, B c, H, W)."""
    B, n, c, H, W = x.shape
    return x.transpose(0, 1).reshape(n, B * c, H, W)


def stem(params: Params, z: Tensor, n_convs: int, act: Activation) -> Tensor:
    """E(x): convolutions ``stem{i}`` (weights) and ``stem{i}_b`` (biases), ``act`` between them."""
    for i in range(n_convs):
        w = params[f"stem{i}"]
        z = conv(z, w, params[f"stem{i}_b"], stride=1 if w.shape[-1] == 3 else 2)
        if i < n_convs - 1:
            z = act(z)
    return z


def field(W: Tensor, b: Tensor, V: Tensor, z: Tensor, act: Activation) -> Tensor:
    """F(z; W, b, V) = conv3x3(V, act(conv3x3(W, z) + b)) for one layer's (B, ...) weights."""
    return conv(act(conv(z, W, b)), V)


def transition(params: Params, z: Tensor, s: int) -> Tensor:
    """The map into stage s > 0: a 4x4 stride-2 convolution ``Q{s}`` with bias ``q{s}``."""
    return conv(z, params[f"Q{s}"], params[f"q{s}"], stride=2)


def pool_readout(params: Params, z: Tensor, B: int, grid: int = 1) -> Tensor:
    """Logits (B, n, k) of the final state z (n, B C, H, W): R pool_G(z) + r, where pool_G
    averages z over a G x G grid of pixel cells (torch's adaptive average pooling, G = ``grid``)
    and flattens it channel by channel into C G^2 features; G = 1 is the mean over pixels, and
    G = H = W the state itself."""
    n, H, W = z.shape[0], z.shape[-2], z.shape[-1]
    if grid > min(H, W):
        # Adaptive pooling would repeat pixels: more features, no more information.
        raise ValueError(f"readout_grid = {grid} is finer than the final state's {H} x {W} pixels; "
                         f"allowed: 1 to {min(H, W)}")
    # G = 1 stays a plain mean: the arithmetic (and so every stored cell's numbers) of before G.
    pooled = z.mean(dim=(2, 3)) if grid == 1 else F.adaptive_avg_pool2d(z, grid)
    feats = pooled.reshape(n, B, -1).transpose(0, 1)
    return torch.baddbmm(params["r"].unsqueeze(1), feats, params["R"].transpose(1, 2))
