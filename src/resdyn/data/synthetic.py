"""Synthetic data sets, generated locally from a seed.

Two spirals (``two_spirals``): class c in {0, 1}, radius r ~ U(0, 1) (drawn so that points are
uniform in arc length: r = sqrt(u)), angle phi = 2 pi turns r + pi c, and

    x = r (cos phi, sin phi) + noise * N(0, I_2).

Defaults: turns = 1.5, noise = 0.05. Samples alternate between the classes, so any prefix is
balanced to within one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_int, check_positive
from ..models.base import generator_for

__all__ = ["two_spirals"]


def two_spirals(
    n: int, seed: int = 0, turns: float = 1.5, noise: float = 0.05
) -> tuple[Tensor, Tensor]:
    """``n`` points of the two-spirals task: inputs (n, 2) float64 and labels (n,) int64."""
    check_int("n", n, 1)
    check_positive("turns", turns)
    check_positive("noise", noise, allow_zero=True)
    g = generator_for(seed, "two_spirals")
    y = torch.arange(n) % 2
    r = torch.sqrt(torch.rand(n, generator=g, dtype=torch.float64))
    phi = 2 * math.pi * turns * r + math.pi * y
    x = r[:, None] * torch.stack([torch.cos(phi), torch.sin(phi)], dim=1)
    x = x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, y
