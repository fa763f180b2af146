"""Depth-correlated Gaussian priors over the layer weights of a per-layer ResNet.

resdyn's construction (docs/depth-prior.md derives it; it is not taken from the papers). A
ResNet of depth L with step h = T / L has its own weights theta_k at each layer time
t_k = k h, k = 0..L-1. The Brownian prior around a mean path m_k is the law of

    theta_k = m_k + s_0 eps_0 + sigma sqrt(h) (eps_1 + ... + eps_k),   eps_j ~ N(0, I) i.i.d.,

a Brownian path of diffusion sigma^2 started from N(m_0, s_0^2 I), sampled at the layer times:
Cov(theta_j, theta_k) = (s_0^2 + sigma^2 h min(j, k)) I. The posterior Q_L is the same law around
a learned mean path m_k + delta_k. The map eps -> theta is linear and invertible, with whitened
coordinates

    u_0 = delta_0 / s_0,   u_k = (delta_k - delta_{k-1}) / (sigma sqrt(h)),   k >= 1,

so KL(Q_L || P_L) = |u|^2 / 2 = |delta_0|^2 / (2 s_0^2) + sum_k |delta_k - delta_{k-1}|^2 / (2 sigma^2 h):
a discrete Cameron-Martin (Sobolev H^1) norm of the mean's deviation. If delta_k = g(t_k) for a
path g with a square-integrable derivative, the sum tends to (1 / (2 sigma^2)) int_0^T |g'(t)|^2 dt
as L grows: the KL is bounded uniformly in depth. Under the i.i.d.-over-layers prior
theta_k ~ N(m_k, s^2 I) the same deviation costs sum_k |delta_k|^2 / (2 s^2) = L * (mean square) /
(2 s^2), which grows linearly in L.

The posterior keeps the prior's covariance: two Brownian laws with different diffusion constants
are mutually singular in the limit L -> infinity (their KL grows like L), so a learned noise scale
on the increments would undo the depth-uniformity.

:class:`WhitenedGaussian` puts a prior over a whole model: the layer parameters coloured by the
Brownian (or an i.i.d.) law, every other parameter (embedding, readout) i.i.d. N(m, s_io^2). In
whitened coordinates u (theta = m + A u) the prior is N(0, I) and the posterior N(u, I), so
KL(Q || P) = |u|^2 / 2 whatever A is, and a draw from Q is m + A (u + eps).

Tensors carry a leading model axis E and the layer axis at ``layer_dim`` (1 by default, the layout
of resdyn's per-layer parameters W (E, L, p, m), b (E, L, p), V (E, L, m, p)). Everything is pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.base import Params
from ..models.stochastic import noise_like

__all__ = ["BrownianPrior", "KLInDepth", "WhitenedGaussian", "iid_kl", "read_at"]


@dataclass(frozen=True)
class BrownianPrior:
    """The Brownian prior of the module docstring: ``start`` s_0 > 0, ``rate`` sigma > 0 (per
    unit of depth-time), ``horizon`` T > 0."""

    start: float
    rate: float
    horizon: float = 1.0

    def __post_init__(self) -> None:
        for name in ("start", "rate", "horizon"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"BrownianPrior.{name} must be a finite number > 0, got {v!r}")

    def step_scales(self, depth: int) -> Tensor:
        """(L,) float64: s_0, then sigma sqrt(h) for the L - 1 increments (h = T / L)."""
        if not (isinstance(depth, int) and depth >= 1):
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        scales = torch.full((depth,), self.rate * math.sqrt(self.horizon / depth), dtype=torch.float64)
        scales[0] = self.start
        return scales

    def covariance(self, depth: int) -> Tensor:
        """(L, L) float64: Cov(theta_j, theta_k) per weight entry, s_0^2 + sigma^2 h min(j, k)."""
        k = torch.arange(depth, dtype=torch.float64)
        return self.start**2 + self.rate**2 * (self.horizon / depth) * torch.minimum(k[:, None], k[None, :])

    def _shaped(self, x: Tensor, layer_dim: int) -> Tensor:
        scales = self.step_scales(x.shape[layer_dim]).to(dtype=x.dtype, device=x.device)
        shape = [1] * x.dim()
        shape[layer_dim] = -1
        return scales.view(shape)

    def offsets(self, eps: Tensor, layer_dim: int = 1) -> Tensor:
        """theta - mean for standard normal ``eps``: the cumulative sum of the scaled draws along
        the layer axis (differentiable, any dtype)."""
        return torch.cumsum(self._shaped(eps, layer_dim) * eps, dim=layer_dim)

    def whiten(self, delta: Tensor, layer_dim: int = 1) -> Tensor:
        """u with ``offsets(u) == delta``: first differences along the layer axis over the scales."""
        first = delta.narrow(layer_dim, 0, 1)
        diffs = torch.diff(delta, dim=layer_dim)
        return torch.cat([first, diffs], dim=layer_dim) / self._shaped(delta, layer_dim)

    def kl(self, delta: Tensor, layer_dim: int = 1) -> Tensor:
        """KL(N(m + delta, C) || N(m, C)) = |whiten(delta)|^2 / 2 per model: (E,) for a tensor whose
        first axis is the model axis (a scalar if ``layer_dim`` is 0 and there is none)."""
        u = self.whiten(delta, layer_dim)
        dims = tuple(range(1, u.dim())) if layer_dim > 0 else tuple(range(u.dim()))
        return 0.5 * u.square().sum(dim=dims)


def read_at(delta: Tensor, depth: int, layer_dim: int = 1) -> Tensor:
    """The deviation path delta (L layers along ``layer_dim``) read at the layer times of the
    coarser depth L_c: t_j = j T / L_c = t_{j r}, r = L / L_c, so its layers 0, r, 2r, ...
    L_c must divide L."""
    L = delta.shape[layer_dim]
    if not (isinstance(depth, int) and depth >= 1 and L % depth == 0):
        raise ValueError(f"read_at: the coarser depth must be an integer >= 1 dividing {L}, got {depth!r}")
    idx = torch.arange(0, L, L // depth, device=delta.device)
    return delta.index_select(layer_dim, idx)


def _half_square(x: Tensor) -> Tensor:
    """|x|^2 / 2 per model (the leading axis), (E,)."""
    return 0.5 * x.square().flatten(1).sum(1)


def iid_kl(delta: Tensor, scale: float) -> Tensor:
    """KL(N(m + delta, s^2 I) || N(m, s^2 I)) = |delta|^2 / (2 s^2) per model, (E,): the
    i.i.d.-over-layers baseline."""
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    return 0.5 * delta.square().sum(dim=tuple(range(1, delta.dim()))) / scale**2


@dataclass(frozen=True)
class WhitenedGaussian:
    """A Gaussian prior P = N(m, A A^T) over a model's parameters, and the posteriors N(m + A u, A A^T)
    that share its covariance, in whitened coordinates u (module docstring).

    mean: m, each tensor with the leading model axis E (detached). layers: the law of the
    parameters named in ``layer_names`` (layer axis 1): a :class:`BrownianPrior`, or a float s
    for i.i.d. N(0, s^2) per layer. io_scale: s_io of every other parameter."""

    mean: Mapping[str, Tensor]
    layers: BrownianPrior | float
    io_scale: float
    layer_names: tuple[str, ...] = ("W", "b", "V")

    def __post_init__(self) -> None:
        scales = [self.io_scale] + ([] if isinstance(self.layers, BrownianPrior) else [self.layers])
        for s in scales:
            if not (isinstance(s, int | float) and math.isfinite(s) and s > 0):
                raise ValueError(f"a prior scale must be a finite number > 0, got {s!r}")
        missing = [n for n in self.layer_names if n not in self.mean]
        if missing:
            raise ValueError(f"layer parameters {missing} are not in the prior mean; it has "
                             f"{sorted(self.mean)}")

    def color(self, name: str, u: Tensor) -> Tensor:
        """A u for parameter ``name`` (any leading axis: models, or one draw per example)."""
        if name not in self.layer_names:
            return self.io_scale * u
        if isinstance(self.layers, BrownianPrior):
            return self.layers.offsets(u, layer_dim=1)
        return self.layers * u

    def zeros(self) -> Params:
        """u = 0: the posterior equal to the prior."""
        return {n: torch.zeros_like(v) for n, v in self.mean.items()}

    def params(self, u: Mapping[str, Tensor]) -> Params:
        """The posterior mean m + A u (the deterministic network of Q)."""
        return {n: self.mean[n] + self.color(n, u[n]) for n in self.mean}

    def kl(self, u: Mapping[str, Tensor]) -> Tensor:
        """KL(Q || P) = |u|^2 / 2 per model, (E,), in u's dtype. The names are summed in sorted
        order, so the value does not depend on the order a dict (a stored file) gives them in."""
        return sum(_half_square(u[n]) for n in sorted(u))

    def kl_in_depth(self, u: Mapping[str, Tensor], depth: int) -> KLInDepth:
        """:meth:`kl` split into the embedding and readout's part, the layers' part, and the part
        of the layers' KL that the same law at the coarser depth L_c = ``depth`` charges the
        deviation delta = A u read at its layer times (:class:`KLInDepth`). The coarse law: the
        Brownian prior of the same s_0, sigma, T (its step sigma sqrt(T / L_c)), or the i.i.d. one
        of the same s."""
        names = sorted(u)
        zero = u[names[0]].new_zeros(u[names[0]].shape[0])
        layers = [n for n in names if n in self.layer_names]
        # delta_0's cost |delta_0|^2 / (2 s_0^2) (or / (2 s^2)) is |u_0|^2 / 2 under either law.
        return KLInDepth(sum((_half_square(u[n]) for n in names if n not in self.layer_names), zero),
                         sum((_half_square(u[n]) for n in layers), zero), self.coarse_kl(u, depth),
                         sum((_half_square(u[n].narrow(1, 0, 1)) for n in layers), zero))

    def coarse_kl(self, u: Mapping[str, Tensor], depth: int) -> Tensor:
        """What the same law at the coarser depth L_c = ``depth`` charges the layer deviation
        delta = A u read at its layer times (:func:`read_at`), per model, (E,): the ``coarse`` part of
        :meth:`kl_in_depth`, alone."""
        names = sorted(n for n in u if n in self.layer_names)
        zero = u[names[0]].new_zeros(u[names[0]].shape[0])

        def law_kl(delta: Tensor) -> Tensor:
            return (self.layers.kl(delta) if isinstance(self.layers, BrownianPrior)
                    else iid_kl(delta, self.layers))

        return sum((law_kl(read_at(self.color(n, u[n]), depth)) for n in names), zero)

    def draw(self, u: Mapping[str, Tensor], seeds: Sequence[int], stream: str) -> Params:
        """One network per model from Q: m + A (u + eps), differentiable in u."""
        eps = noise_like(dict(u), seeds, stream)
        return {n: self.mean[n] + self.color(n, u[n] + eps[n]) for n in self.mean}


@dataclass(frozen=True)
class KLInDepth:
    """KL(Q || P) of a :class:`WhitenedGaussian` posterior split by where it is paid
    (:meth:`WhitenedGaussian.kl_in_depth`), each (E,): ``io`` for the embedding and readout,
    ``layers`` for the layer weights at depth L, and ``coarse``, what the same law at the coarser
    depth L_c charges the layer deviation read at its layer times (:func:`read_at`). ``excess`` =
    layers - coarse is what the finer layers add (r = L / L_c): under the Brownian prior it is
    sum_j sum_{k in B_j} |d_k - dbar_j|^2 / (2 sigma^2 h) + sum_{k > (L_c - 1) r} |d_k|^2 / (2 sigma^2 h)
    >= 0, with d_k the increments, B_j the r of them that make up the coarse increment j and dbar_j
    their mean (the last sum: the r - 1 increments past the last coarse layer time); zero exactly
    when the path is linear between the coarse layer times and held after the last, so a
    deviation smooth in depth pays almost nothing for the finer layers. Under the i.i.d. prior a
    smooth deviation pays about (r - 1) times ``coarse`` more. ``start`` is the part both pay for
    delta_0; (layers - start) / (coarse - start) compares the increments alone."""

    io: Tensor
    layers: Tensor
    coarse: Tensor
    #: What the first layer's deviation delta_0 alone costs (|delta_0|^2 / (2 s_0^2) under the
    #: Brownian prior): a part of both ``layers`` and ``coarse``, whatever the depth.
    start: Tensor

    @property
    def excess(self) -> Tensor:
        return self.layers - self.coarse

    @property
    def total(self) -> Tensor:
        return self.io + self.layers
