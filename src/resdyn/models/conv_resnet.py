"""The convolutional ResNet for images: the residual step of ``resnet`` with 3x3 convolutions.

    z_0 = conv(A, x) + c,   z_{k+1} = z_k + h conv(V_k, act(conv(W_k, z_k) + b_k)),   h = T / L,
    output = R mean_{pixels}(z_L) + r.

Convolutions are 3x3, stride 1, zero padding 1, so the state keeps the image size with
``channels`` channels. Every model (and every chunk of samples) has its own filters: a layer is one grouped
convolution with a group per model, which on the CPU gives each group the arithmetic it gets
alone (tests/test_engine.py checks this bitwise). Shapes: A (B, C, c_in 9), c (B, C), W and V
(B, L, C, 9 C), b (B, L, C), R (B, k, C), r (B, k); inputs (B, n, c_in, H, W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_bool, check_int
from .activations import Activation, get_activation
from .base import Params
from .blocks import check_path_options
from .paths import layer_times, sample_layer_weights

__all__ = ["ConvResNet"]


def conv3x3(z: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Per-model 3x3 convolution as one grouped convolution.

    z: (n, B C_in, H, W), model b's channels in block b; weight: (B, C_out, 9 C_in), the index of
    (channel, di, dj) being 9 channel + 3 di + dj; bias: (B, C_out). Returns (n, B C_out, H, W).
    """
    B, o, k9 = weight.shape
    w = weight.reshape(B * o, k9 // 9, 3, 3)
    b = None if bias is None else bias.reshape(B * o)
    return F.conv2d(z, w, b, padding=1, groups=B)


@dataclass(frozen=True)
class ConvResNet:
    """in_channels, out_dim (classes), channels C, depth L, horizon T, activation (and tau),
    weight_init 'smooth' or 'iid', init_scale (filters have std init_scale / sqrt(9 C)),
    bias_scale, modes (cosine modes of a smooth path), tied (one filter pair for every layer)."""

    in_channels: int = 1
    out_dim: int = 10
    channels: int = 8
    depth: int = 4
    horizon: float = 1.0
    activation: str = "relu"
    tau: float = 0.5
    weight_init: str = "smooth"
    init_scale: float = 1.0
    bias_scale: float = 0.1
    modes: int = 4
    tied: bool = False
    family = "conv_resnet"

    def __post_init__(self) -> None:
        check_int("in_channels", self.in_channels, 1)
        check_int("out_dim", self.out_dim, 1)
        check_int("channels", self.channels, 1)
        check_int("depth", self.depth, 1)
        check_path_options(self)
        check_bool("tied", self.tied)

    @property
    def act(self) -> Activation:
        return get_activation(self.activation, tau=self.tau)

    @property
    def step(self) -> float:
        return self.horizon / self.depth

    def init(self, generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> Params:
        g, C, ci, k = generator, self.channels, self.in_channels, self.out_dim
        times = layer_times(self.depth, self.horizon, self.tied)
        std = self.init_scale / math.sqrt(9 * C)

        def path(shape: tuple[int, ...], s: float) -> Tensor:
            return sample_layer_weights(g, shape, s, times, self.horizon, self.weight_init,
                                        self.modes)

        params = {
            "A": torch.randn(C, 9 * ci, generator=g, dtype=torch.float64) / math.sqrt(9 * ci),
            "c": torch.zeros(C, dtype=torch.float64),
            "W": path((C, 9 * C), std),
            "b": path((C,), self.bias_scale),
            "V": path((C, 9 * C), std),
            "R": torch.randn(k, C, generator=g, dtype=torch.float64) / math.sqrt(C),
            "r": torch.zeros(k, dtype=torch.float64),
        }
        return {n: v.to(dtype=dtype, device=device) for n, v in params.items()}

    def forward(self, params: Params, x: Tensor) -> Tensor:
        """Logits (B, n, k) for images x of shape (B, n, c_in, H, W)."""
        if x.dim() != 5:
            raise ValueError(f"ConvResNet expects inputs (B, n, channels, H, W), got {tuple(x.shape)}")
        act, h = self.act, self.step
        B, n, c, H, Wd = x.shape
        W, b, V = (params[n].unbind(1) for n in ("W", "b", "V"))
        # The state lives as (n, B C, H, W): every model's channels side by side, so each layer
        # is one grouped convolution over all models.
        z = conv3x3(x.transpose(0, 1).reshape(n, B * c, H, Wd), params["A"], params["c"])
        for k in range(self.depth):
            l = 0 if self.tied else k
            z = z + h * conv3x3(act(conv3x3(z, W[l], b[l])), V[l])
        pooled = z.mean(dim=(2, 3)).view(n, B, self.channels).transpose(0, 1)
        return torch.baddbmm(params["r"].unsqueeze(1), pooled, params["R"].transpose(1, 2))
