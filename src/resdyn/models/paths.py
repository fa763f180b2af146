"""Random parameter paths theta(t) on [0, T], sampled at the layer times t_k = k h.

A depth study compares networks of different L that should approximate one continuous-time
model. With i.i.d. weights per layer the residual part averages out as L grows (Marion et al.,
2022): z_L - z_0 = h sum_k F(z_k; theta_k) is a mean of L independent zero-mean terms, of size
O(L^{-1/2}). resdyn's default instead samples one smooth path per weight entry,

    theta(t) = std * sum_{j=0}^{J-1} c_j g_j phi_j(t),   g_j ~ N(0, 1) i.i.d.,
    phi_0 = 1,  phi_j(t) = sqrt(2) cos(pi j t / T),  c_j = (1 + j)^{-1} / sqrt(sum_i (1 + i)^{-2}),

so that (1/T) int_0^T E theta(t)^2 dt = std^2 and theta is smooth in t. The coefficients g do not
depend on L: the same seed gives the same path for every depth, and theta_k = theta(t_k).

The knot parametrisation (:class:`KnotResNet`) makes the *trainable* parameters depth-free: the
residual weights are P + 1 knot values theta_0..theta_P at s_p = p T / P ('linear') or P values
on [s_p, s_{p+1}) ('constant'), and the network of depth L uses theta(t_k), t_k = k T / L, the
piecewise-linear (or piecewise-constant) path through the knots. Every depth L evaluates the
same path, so anything that depends on the parameters alone (a PAC-Bayes KL, a norm of the
knots) is the same for every L.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "DepthStack",
    "KnotResNet",
    "SmoothPath",
    "at_depth",
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

    def derivative(self, t: Tensor) -> Tensor:
        """d theta / dt at each time in ``t``."""
        j = torch.arange(self.coef.shape[0], dtype=self.coef.dtype, device=self.coef.device)
        w = math.pi * j / self.horizon
        dphi = -math.sqrt(2.0) * w * torch.sin(t.to(self.coef)[:, None] * w)
        return torch.tensordot(dphi, self.coef, dims=([1], [0]))


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


@dataclass(frozen=True)
class KnotResNet:
    """A discrete ResNet or convolutional ResNet of depth ``inner.depth`` whose residual weights
    are a path through ``knots`` knot intervals (see the module docstring).

    Parameters are those of ``inner`` except that W, b, V (or K, b) have P + 1 ('linear') or P
    ('constant') entries on their layer axis instead of L. ``init`` draws them as ``inner`` of
    depth n_knots and horizon T n_knots / P would, i.e. at the knot times s_p = p T / P.
    """

    inner: Any
    knots: int = 4
    interpolation: str = "linear"
    family = "knot_resnet"

    def __post_init__(self) -> None:
        if getattr(self.inner, "family", None) not in ("resnet", "conv_resnet"):
            raise ValueError("KnotResNet wraps a 'resnet' or 'conv_resnet' model, got "
                             f"{getattr(self.inner, 'family', type(self.inner).__name__)!r}")
        if self.inner.tied:
            raise ValueError("KnotResNet needs an untied inner model (tied=False)")
        knot_layer_weights(self.knots, self.inner.depth, self.interpolation)  # validates

    @property
    def out_dim(self) -> int:
        return self.inner.out_dim

    @property
    def depth(self) -> int:
        return self.inner.depth

    @property
    def knot_sets(self) -> int:
        return self.knots + (self.interpolation == "linear")

    @property
    def layer_names(self) -> tuple[str, ...]:
        return ("K", "b") if getattr(self.inner, "block", "two_layer") == "one_layer" else ("W", "b", "V")

    def with_depth(self, depth: int) -> KnotResNet:
        """The same path evaluated by a network of depth ``depth`` (same parameters)."""
        return dataclasses.replace(self, inner=dataclasses.replace(self.inner, depth=depth))

    def init(self, generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> dict[str,
                                                                                               Tensor]:
        n = self.knot_sets
        at_knots = dataclasses.replace(self.inner, depth=n, horizon=self.inner.horizon * n / self.knots)
        return at_knots.init(generator, dtype, device)

    def layer_params(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """The inner model's parameters: knot values expanded to the L layers."""
        left, right, s = knot_layer_weights(self.knots, self.inner.depth, self.interpolation)
        out = dict(params)
        for name in self.layer_names:
            if params[name].shape[1] != self.knot_sets:
                raise ValueError(f"KnotResNet: parameter {name} has {params[name].shape[1]} knot "
                                 f"entries, expected {self.knot_sets}")
            out[name] = layers_from_knots(params[name], left, right, s)
        return out

    def forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """Outputs of the depth-L network. For the MLP ResNet, layer k's weights
        theta_left + s_k (theta_right - theta_left) are formed when the layer runs, so no
        (B, L, ...) stack is ever built (the same arithmetic as :meth:`layer_params`, elementwise)."""
        if self.inner.family != "resnet":
            return self.inner.forward(self.layer_params(params), x)
        from .blocks import embed, readout, residual_map

        left, right, s = knot_layer_weights(self.knots, self.inner.depth, self.interpolation)
        names = self.layer_names
        knots = {n: params[n].unbind(1) for n in names}
        if len(knots[names[0]]) != self.knot_sets:
            raise ValueError(f"KnotResNet: parameter {names[0]} has {len(knots[names[0]])} knot "
                             f"entries, expected {self.knot_sets}")
        act, h = self.inner.act, self.inner.step
        z = embed(params, x.flatten(2))
        for a, b, w in zip(left.tolist(), right.tolist(), s.tolist(), strict=True):
            theta = {n: knots[n][a] if w == 0 else knots[n][a] + w * (knots[n][b] - knots[n][a])
                     for n in names}
            z = z + h * residual_map(theta, z, act)
        return readout(params, z)


def at_depth(model: Any, depth: int) -> Any:
    """The network of depth L = ``depth`` on the same depth-free parameters: a
    :class:`KnotResNet` evaluated with L layers, or a continuous-time ResNet (family
    'ode_resnet', already a knot parametrisation) solved with L / P fixed steps per knot."""
    if isinstance(model, KnotResNet):
        return model.with_depth(depth)
    if getattr(model, "family", None) == "ode_resnet":
        if depth % model.knots:
            raise ValueError(f"at_depth: depth {depth} must be a multiple of the {model.knots} knots")
        return dataclasses.replace(model, steps_per_knot=depth // model.knots)
    raise ValueError("at_depth needs a KnotResNet or an ODEResNet, got "
                     f"{getattr(model, 'family', type(model).__name__)!r}")


@dataclass(frozen=True)
class DepthStack:
    """One depth-free parameter set read by the networks of several depths L_1..L_H at once:
    ``forward`` returns (B, n, H, k), head h being ``at_depth(model, depths[h])``. With the
    engine's heads rule (:mod:`resdyn.training.losses`) the training loss is the mean over depths

        (1/H) sum_h loss(f_{L_h}(theta; x), y),

    so ERM on it finds a path that is a good network at every depth it names (the certificates'
    data-dependent prior, docs/theory.md)."""

    model: Any
    depths: tuple[int, ...]
    family = "depth_stack"

    def __post_init__(self) -> None:
        if not self.depths:
            raise ValueError("DepthStack needs at least one depth")
        for L in self.depths:
            at_depth(self.model, L)  # validates every depth against the model

    @property
    def out_dim(self) -> int:
        return self.model.out_dim

    def init(self, generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> dict[str,
                                                                                               Tensor]:
        return self.model.init(generator, dtype, device)

    def forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        return torch.stack([at_depth(self.model, L).forward(params, x) for L in self.depths], -2)
