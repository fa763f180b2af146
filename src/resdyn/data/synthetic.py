"""Synthetic data sets, generated locally from a seed.

Two spirals (``two_spirals``): class c in {0, 1}, radius r ~ U(0, 1) (drawn so that points are
uniform in arc length: r = sqrt(u)), angle phi = 2 pi turns r + pi c, and

    x = r (cos phi, sin phi) + noise * N(0, I_2).

Defaults: turns = 1.5, noise = 0.05. Samples alternate between the classes, so any prefix is
balanced to within one.

Concentric circles (``circles``): class c in {0, 1} (alternating), angle phi ~ U(0, 2 pi),
radius rho_0 = 1, rho_1 = factor, and

    x = rho_c (cos phi, sin phi) + noise * N(0, I_2).

Defaults: factor = 0.5, noise = 0.1. The Bayes classifier thresholds |x| near (1 + factor) / 2.

Teacher network (``teacher``): x ~ N(0, I_d), and the label is the arg max of a fixed random
one-hidden-layer teacher,

    y = argmax_j (a_j . tanh(W x + b)),   W ~ N(0, 1/d)^{h x d}, b ~ N(0, 1/4), a ~ N(0, 1/h)^{k x h},

drawn from the ``(teacher_seed, 'teacher/weights')`` stream. The task is realisable by a network
of width h; classes are not balanced (their frequencies are those the teacher induces).
Defaults: dim d = 10, hidden h = 16, classes k = 2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_int, check_positive
from .._seeds import generator_for

__all__ = ["circles", "teacher", "teacher_weights", "two_spirals"]


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


def circles(n: int, seed: int = 0, factor: float = 0.5, noise: float = 0.1) -> tuple[Tensor, Tensor]:
    """``n`` points of two concentric circles: inputs (n, 2) float64 and labels (n,) int64."""
    check_int("n", n, 1)
    check_positive("factor", factor)
    check_positive("noise", noise, allow_zero=True)
    g = generator_for(seed, "circles")
    y = torch.arange(n) % 2
    phi = 2 * math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    rho = torch.where(y == 0, 1.0, float(factor)).to(torch.float64)
    x = rho[:, None] * torch.stack([torch.cos(phi), torch.sin(phi)], dim=1)
    x = x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, y


def teacher_weights(dim: int = 10, hidden: int = 16, classes: int = 2,
                    teacher_seed: int = 0) -> dict[str, Tensor]:
    """The teacher's weights W (h, d), b (h,), a (k, h), float64 (see the module docstring)."""
    check_int("dim", dim, 1)
    check_int("hidden", hidden, 1)
    check_int("classes", classes, 2)
    g = generator_for(teacher_seed, "teacher/weights")
    W = torch.randn(hidden, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    b = 0.5 * torch.randn(hidden, generator=g, dtype=torch.float64)
    a = torch.randn(classes, hidden, generator=g, dtype=torch.float64) / math.sqrt(hidden)
    return {"W": W, "b": b, "a": a}


def teacher(n: int, seed: int = 0, dim: int = 10, hidden: int = 16, classes: int = 2,
            teacher_seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` points labelled by the teacher network: inputs (n, dim) float64, labels (n,) int64.

    ``seed`` draws the inputs; ``teacher_seed`` the teacher, so pool and test share one teacher.
    """
    check_int("n", n, 1)
    w = teacher_weights(dim, hidden, classes, teacher_seed)
    g = generator_for(seed, "teacher/inputs")
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    y = (torch.tanh(x @ w["W"].T + w["b"]) @ w["a"].T).argmax(1)
    return x, y
