"""Random parameter paths theta(t) on [0, T], sampled at the layer times t_k = k h.

A depth study compares networks of different L that should approximate one continuous-time
model. With i.i.d. weights per layer the residual part averages out as L grows (Marion et al.,
2022): z_L - z_0 = h sum_k F(z_k; theta_k) is a mean of L independent zero-mean terms, of size
O(L^{-1/2}). resdyn's default instead samples one smooth path per weight entry,

    theta(t) = std * sum_{j=0}^{J-1} c_j g_j phi_j(t),   g_j ~ N(0, 1) i.i.d.,
    phi_0 = 1,  phi_j(t) = sqrt(2) cos(pi j t / T),  c_j = (1 + j)^{-1} / sqrt(sum_i (1 + i)^{-2}),

so that (1/T) int_0^T E theta(t)^2 dt = std^2 and theta is smooth in t. The coefficients g do not
depend on L: the same seed gives the same path for every depth, and theta_k = theta(t_k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SmoothPath", "sample_layer_weights"]


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

    def derivative(self, t: Tensor) -> Tensor:
        """d theta / dt at each time in ``t``."""
        j = torch.arange(self.coef.shape[0], dtype=self.coef.dtype, device=self.coef.device)
        w = math.pi * j / self.horizon
        dphi = -math.sqrt(2.0) * w * torch.sin(t.to(self.coef)[:, None] * w)
        return torch.tensordot(dphi, self.coef, dims=([1], [0]))


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
