"""Random parameter paths theta(t) on [0, T], sampled at the layer times t_k = k h.

A depth study compares networks of different L that should approximate one continuous-time
model. With i.i.d. weights per layer the residual part averages out as L grows (Marion et al.,
2022): z_L - z_0 = h sum_k F(z_k; theta_k) is a mean of L independent zero-mean terms, of size
O(L^{-1/2}). resdyn's default instead samples one smooth path per weight entry,

    theta(t) = std * sum_{j=0}^{J-1} c_j g_j phi_j(t),   g_j ~ N(0, 1) i.i.d.,
    phi_0 = 1,  phi_j(t) = sqrt(2) cos(pi j t / T),  c_j = (1 + j)^{-1} / sqrt(sum_i (1 + i)^{-2}),

so that (1/T) int_0^T E theta(t)^2 dt = std^2 and theta is smooth in t. The coefficients g do not
depend on L: the same seed gives the same path for every depth, and theta_k = theta(t_k).

The knot parametrisation of :mod:`resdyn.models.knot_resnet` reads these paths through knot
values (:func:`knot_layer_weights`, :func:`layers_from_knots`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "SmoothPath",
    "knot_layer_weights",
    "layer_times",
    "layers_from_knots",
    "sample_layer_weights",
]


@dataclass(frozen=True)
class SmoothPath:
    """A sampled smooth path: ``coef`` has shape ``(J, *shape)``; see the module docstring."""

    coef: Tensor
    horizon: float

    @classmethod
    def sample(
        cls,
        generator: torch.Generator,
        shape: tuple[int, ...],
        std: float,
        horizon: float,
        modes: int = 4,
        dtype: torch.dtype = torch.float64,
    ) -> SmoothPath:
        g = torch.randn((modes, *shape), generator=generator, dtype=dtype)
        c = torch.tensor([1.0 / (1 + j) for j in range(modes)], dtype=dtype)
        c = c / torch.sqrt((c * c).sum())
        return cls(std * g * c.view(-1, *([1] * len(shape))), horizon)

    def basis(self, t: Tensor) -> Tensor:
        """phi_j(t) for every j: shape ``(len(t), J)``."""
        j = torch.arange(self.coef.shape[0], dtype=self.coef.dtype, device=self.coef.device)
        phi = math.sqrt(2.0) * torch.cos(math.pi * t.to(self.coef)[:, None] * j / self.horizon)
        phi[:, 0] = 1.0
        return phi

    def __call__(self, t: Tensor) -> Tensor:
        """theta(t) for each time in ``t``: shape ``(len(t), *shape)``."""
        return torch.tensordot(self.basis(t), self.coef, dims=([1], [0]))


def layer_times(depth: int, horizon: float, tied: bool = False) -> Tensor:
    """t_k = k h, h = T / L, for k = 0..L-1 (a single time, 0, when the layers are tied)."""
    return torch.arange(1 if tied else depth, dtype=torch.float64) * (horizon / depth)


def sample_layer_weights(
    generator: torch.Generator,
    shape: tuple[int, ...],
    std: float,
    times: Tensor,
    horizon: float,
    init: str,
    modes: int = 4,
) -> Tensor:
    """Weights for every layer time in ``times``: shape ``(len(times), *shape)``, float64.

    ``init='smooth'`` samples one :class:`SmoothPath` and evaluates it at ``times``;
    ``init='iid'`` draws every layer independently from N(0, std^2) (the contrast: its residual
    part vanishes as L grows); ``init='zero'`` gives zeros.
    """
    if init == "smooth":
        return SmoothPath.sample(generator, shape, std, horizon, modes)(times)
    if init == "iid":
        return std * torch.randn((len(times), *shape), generator=generator, dtype=torch.float64)
    if init == "zero":
        return torch.zeros((len(times), *shape), dtype=torch.float64)
    raise ValueError(f"init must be one of 'smooth', 'iid', 'zero'; got {init!r}")


KNOT_INTERPOLATIONS = ("constant", "linear")


def knot_layer_weights(knots: int, depth: int, interpolation: str) -> tuple[Tensor, Tensor, Tensor]:
    """(left, right, s), each of length L: theta(t_k) = theta_left + s (theta_right - theta_left).

    t_k = k T / L lies at knot position k P / L = p_k + s_k with p_k = floor(k P / L) and
    s_k = (k P - p_k L) / L, computed in integers so that a knot is never missed by rounding.
    'constant' uses theta_{p_k} (s = 0); 'linear' interpolates between p_k and p_k + 1.
    """
    if interpolation not in KNOT_INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of 'constant', 'linear'; got {interpolation!r}")
    if knots < 1 or depth < 1:
        raise ValueError(f"knots and depth must be integers >= 1, got {knots} and {depth}")
    num = torch.arange(depth, dtype=torch.long) * knots
    left = num // depth
    if interpolation == "constant":
        return left, left, torch.zeros(depth, dtype=torch.float64)
    return left, left + 1, (num - left * depth).to(torch.float64) / depth


def layers_from_knots(values: Tensor, left: Tensor, right: Tensor, s: Tensor) -> Tensor:
    """Knot values (B, n_knots, ...) to layer values (B, L, ...); elementwise per model (no
    reduction across models, so a model's layers do not depend on its batch-mates)."""
    a = values.index_select(1, left.to(values.device))
    if bool(torch.all(s == 0)):
        return a
    b = values.index_select(1, right.to(values.device))
    w = s.to(dtype=values.dtype, device=values.device).view(1, -1, *([1] * (values.dim() - 2)))
    return a + w * (b - a)
