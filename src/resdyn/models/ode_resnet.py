"""The continuous-time ResNet: dz/dt = F(z; theta(t)), t in [0, T], z(0) = A x + c.

theta is given on P knot intervals [t_p, t_{p+1}], t_p = p T / P:

* ``interpolation='constant'``: theta(t) = theta_p on interval p (P parameter sets, the same
  layout as a ResNet of depth P);
* ``interpolation='linear'``: theta(t) = theta_p + (t - t_p) / (T / P) (theta_{p+1} - theta_p)
  (P + 1 parameter sets at the knots).

The flow map Phi_T(x) is solved interval by interval with torchdiffeq
(:func:`resdyn.models.knot_flow.knot_flow`). With
``interpolation='constant'``, P = L and ``method='euler'`` with one step per interval, the flow is
exactly the discrete ResNet of depth L.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Params
from .blocks import ResidualOptions, embed, layer_params, readout, residual_map
from .knot_flow import FIXED_METHODS, METHODS, check_knot_options, knot_flow, knot_times

__all__ = ["FIXED_METHODS", "METHODS", "ODEResNet"]



@dataclass(frozen=True)
class ODEResNet(ResidualOptions):
    """Continuous-time ResNet; see the module docstring.

    knots: P, the number of knot intervals. interpolation: 'constant' or 'linear'. method:
    'euler', 'midpoint', 'rk4' (fixed steps, ``steps_per_knot`` per interval) or 'dopri5'
    (adaptive, ``rtol``/``atol``). adjoint: gradients by the adjoint ODE instead of through the
    solver's operations.
    """

    knots: int = 8
    interpolation: str = "constant"
    method: str = "rk4"
    steps_per_knot: int = 1
    rtol: float = 1e-7
    atol: float = 1e-9
    adjoint: bool = False
    family = "ode_resnet"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_knot_options(self)

    @property
    def knot_step(self) -> float:
        return self.horizon / self.knots

    def knot_times(self) -> Tensor:
        """Times of the parameter sets: t_p for p < P ('constant') or p <= P ('linear')."""
        return knot_times(self.knots, self.horizon, self.interpolation)

    def init(self, generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> Params:
        params = {**self.init_io(generator), **self.init_layers(generator, self.knot_times())}
        return {k: v.to(dtype=dtype, device=device) for k, v in params.items()}

    def _field(self, layers: list[Params], p: int) -> Callable[[Tensor, Tensor], Tensor]:
        act, t0 = self.act, p * self.knot_step
        left = layers[p]
        if self.interpolation == "constant":
            return lambda t, z: residual_map(left, z, act)
        right = layers[p + 1]
        inv = 1.0 / self.knot_step

        def field(t: Tensor, z: Tensor) -> Tensor:
            s = (t - t0) * inv
            theta = {n: left[n] + s * (right[n] - left[n]) for n in left}
            return residual_map(theta, z, act)

        return field

    def flow(self, params: Params, z0: Tensor, return_knots: bool = False) -> Tensor:
        """Phi_T(z0), or with ``return_knots`` the states at every knot, shape (P+1, B, n, m)."""
        names = ("W", "b", "V") if self.block == "two_layer" else ("K", "b")
        layers = layer_params(params, self.block)
        return knot_flow(lambda p: self._field(layers, p), z0, knots=self.knots,
                         knot_step=self.knot_step, method=self.method,
                         steps_per_knot=self.steps_per_knot, rtol=self.rtol, atol=self.atol,
                         adjoint_params=[params[n] for n in names] if self.adjoint else None,
                         return_knots=return_knots)

    def forward(self, params: Params, x: Tensor) -> Tensor:
        """Outputs g(Phi_T(A x + c)) of shape (B, n, k) for inputs of shape (B, n, d)."""
        return readout(params, self.flow(params, embed(params, x.flatten(2))))
