"""Activations, each with the constants the bounds use.

Every activation ``act`` here satisfies ``act(0) = 0`` and is Lipschitz with constant
``lipschitz`` (the contraction lemma in docs/theory.md needs both). The dead-zone family
vanishes on a band of inputs ``dead_zone = (lo, hi)``: ``act(z) = 0`` for ``lo <= z <= hi``.

=================  =====================================================  =========  ==============
name               act(z)                                                 Lipschitz  dead zone
=================  =====================================================  =========  ==============
relu               max(z, 0)                                              1          (-inf, 0]
tanh               tanh(z)                                                1          none
gelu               z Phi(z)                                               1.1289...  none
soft_threshold     sign(z) max(|z| - tau, 0)                              1          [-tau, tau]
shifted_relu       max(z - tau, 0)                                        1          (-inf, tau]
smooth_dead_zone   0 on |z| <= tau; sign(z)(|z|-tau)^2/(2 delta) up to    1          [-tau, tau]
                   |z| = tau + delta; sign(z)(|z| - tau - delta/2) beyond
=================  =====================================================  =========  ==============

gelu's constant is sup_z d/dz [z Phi(z)] = Phi(sqrt 2) + sqrt 2 phi(sqrt 2), attained at z = sqrt 2.

tanh is evaluated as 2 sigma(2 z) - 1 (sigma the logistic function), which is tanh exactly in real
arithmetic and within 1.5 units of the last place of 1 in floating point (checked against
``torch.tanh`` on 4 million points in [-30, 30], both precisions): ``torch.tanh`` of the CPU build
resdyn pins is 2.4 to 3.1 times slower than the logistic form on (189, 64, 16) float32 tensors
(``benchmarks/bench_activations.py``), and the activation is a quarter of a training step.

``grad_from_output(g, a)``, where given, is g * act'(u) written with the output a = act(u) only
(tanh: g (1 - a^2); the ReLU family: g where a != 0): the fused residual stack
(:mod:`resdyn.models.fused`) keeps a for its backward and never the pre-activation u.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["ACTIVATIONS", "Activation", "get_activation"]

_SQRT2 = math.sqrt(2.0)
GELU_LIPSCHITZ = 0.5 * (1.0 + math.erf(1.0)) + _SQRT2 * math.exp(-1.0) / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class Activation:
    """A pointwise activation with its Lipschitz constant and dead zone.

    ``dead_zone`` is ``(lo, hi)`` with ``act(z) = 0`` exactly for ``lo <= z <= hi`` (``lo`` may be
    ``-inf``), or ``None`` when ``act`` vanishes only at isolated points.
    """

    name: str
    fn: Callable[[Tensor], Tensor] = field(repr=False, compare=False)
    lipschitz: float
    dead_zone: tuple[float, float] | None
    tau: float = 0.0
    grad_from_output: Callable[[Tensor, Tensor], Tensor] | None = field(default=None, repr=False,
                                                                         compare=False)

    def __call__(self, z: Tensor) -> Tensor:
        return self.fn(z)

    @property
    def dead_zone_width(self) -> float:
        """Length of the dead zone (``inf`` for a half-line, 0 when there is none)."""
        if self.dead_zone is None:
            return 0.0
        lo, hi = self.dead_zone
        return hi - lo


def _soft_threshold(tau: float) -> Callable[[Tensor], Tensor]:
    def fn(z: Tensor) -> Tensor:
        return torch.sign(z) * torch.clamp(z.abs() - tau, min=0.0)

    return fn


def _shifted_relu(tau: float) -> Callable[[Tensor], Tensor]:
    def fn(z: Tensor) -> Tensor:
        return torch.clamp(z - tau, min=0.0)

    return fn


def _smooth_dead_zone(tau: float, delta: float) -> Callable[[Tensor], Tensor]:
    def fn(z: Tensor) -> Tensor:
        r = torch.clamp(z.abs() - tau, min=0.0)
        # C^1 junction: quadratic on the ramp (0, delta), linear with slope 1 after it.
        inner = r * r / (2.0 * delta)
        outer = r - 0.5 * delta
        return torch.sign(z) * torch.where(r < delta, inner, outer)

    return fn


def _check_width(name: str, value: float, what: str = "tau") -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"activation {name!r}: {what} must be a finite number >= 0, got {value!r}")
    return float(value)


def _tanh(z: Tensor) -> Tensor:
    s = torch.sigmoid(z * 2)
    if torch.is_grad_enabled():  # sigmoid's backward keeps s: no writing into it
        return s.mul(2).sub(1)
    return s.mul_(2).sub_(1)  # the same arithmetic without two fresh tensors


def _tanh_grad(g: Tensor, a: Tensor) -> Tensor:
    return torch.ops.aten.tanh_backward(g, a)


def _where_nonzero(g: Tensor, a: Tensor) -> Tensor:
    return torch.where(a != 0, g, torch.zeros((), dtype=g.dtype, device=g.device))


def get_activation(name: str, tau: float = 0.5, delta: float = 0.5) -> Activation:
    """Return the activation called ``name``.

    ``tau`` is the dead-zone half-width (soft_threshold, smooth_dead_zone) or shift
    (shifted_relu); ``delta`` is the ramp length of smooth_dead_zone. Both are ignored by
    activations without a dead-zone parameter.
    """
    if name == "relu":
        return Activation("relu", torch.relu, 1.0, (-math.inf, 0.0), grad_from_output=_where_nonzero)
    if name == "tanh":
        return Activation("tanh", _tanh, 1.0, None, grad_from_output=_tanh_grad)
    if name == "gelu":
        return Activation("gelu", torch.nn.functional.gelu, GELU_LIPSCHITZ, None)
    if name == "soft_threshold":
        tau = _check_width(name, tau)
        return Activation(name, _soft_threshold(tau), 1.0, (-tau, tau), tau, _where_nonzero)
    if name == "shifted_relu":
        tau = _check_width(name, tau)
        return Activation(name, _shifted_relu(tau), 1.0, (-math.inf, tau), tau, _where_nonzero)
    if name == "smooth_dead_zone":
        tau = _check_width(name, tau)
        delta = _check_width(name, delta, "delta")
        if delta == 0.0:
            raise ValueError(f"activation {name!r}: delta must be > 0, got {delta!r}")
        return Activation(name, _smooth_dead_zone(tau, delta), 1.0, (-tau, tau), tau)
    raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")


ACTIVATIONS: tuple[str, ...] = (
    "relu",
    "tanh",
    "gelu",
    "soft_threshold",
    "shifted_relu",
    "smooth_dead_zone",
)
