"""Depth-free ResNets: residual weights as a path through knots, read at any depth.

The knot parametrisation (:class:`KnotResNet`) makes the *trainable* parameters depth-free: the
residual weights are P + 1 knot values theta_0..theta_P at s_p = p T / P ('linear') or P values
on [s_p, s_{p+1}) ('constant'), and the network of depth L uses theta(t_k), t_k = k T / L, the
piecewise-linear (or piecewise-constant) path through the knots. Every depth L evaluates the
same path, so anything that depends on the parameters alone (a PAC-Bayes KL, a norm of the
knots) is the same for every L. :class:`DepthStack` reads one such parameter set at several depths.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .blocks import embed, readout, residual_map
from .paths import knot_layer_weights, layers_from_knots

__all__ = ["DepthStack", "KnotResNet", "at_depth"]


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
        (B, L, ...) stack is ever built (the same arithmetic as :meth:`layer_params`, elementwise).
        Each layer is the reference's residual layer (:mod:`resdyn.models.reference`);
        tests/test_reference.py checks this against the reference on the expanded layers."""
        if self.inner.family != "resnet":
            return self.inner.forward(self.layer_params(params), x)
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
