"""The staged image ResNet in continuous time: each stage solves dz/dt = F_s(z; theta_s(t)).

Stem, transitions and readout are those of :class:`~resdyn.models.image_resnet.ImageResNet`;
the stages' residual weights are knots of theta_s(t) on P intervals of [0, T]:
'constant' holds theta_{s,p} on interval p (P knots), 'linear' interpolates between
theta_{s,p} and theta_{s,p+1} (P + 1 knots). Each stage's flow map is solved by torchdiffeq
(:func:`resdyn.models.knot_flow.knot_flow`): 'euler', 'midpoint', 'rk4' with ``steps_per_knot``
fixed steps per interval, or adaptive 'dopri5'. With 'constant', P = L and 'euler' at one step
per interval, it is exactly the discrete ImageResNet of depth L (tests/test_image_resnet.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .base import Params
from .image_blocks import field
from .image_resnet import ImageOptions
from .knot_flow import check_knot_options, knot_flow, knot_times

__all__ = ["ImageODEResNet"]


@dataclass(frozen=True)
class ImageODEResNet(ImageOptions):
    """Continuous-time staged image ResNet (module docstring): knots P, interpolation, method,
    steps_per_knot (fixed-step methods), rtol/atol (dopri5), adjoint."""

    knots: int = 4
    interpolation: str = "constant"
    method: str = "rk4"
    steps_per_knot: int = 1
    rtol: float = 1e-5
    atol: float = 1e-6
    adjoint: bool = False
    family = "image_ode_resnet"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_knot_options(self)

    @property
    def knot_step(self) -> float:
        return self.horizon / self.knots

    def discretised(self, depth: int) -> ImageODEResNet:
        """The same knot path solved by explicit Euler in ``depth`` steps (depth / P per interval):
        a per-layer ResNet of depth L = ``depth`` whose layer weights are theta_s(t_k) at
        t_k = k T / L, z_{k+1} = z_k + h F_s(z_k; theta_s(t_k)), with the same parameters. Its
        flow map is within O(1 / L) of the exact one."""
        if not (isinstance(depth, int) and depth >= 1 and depth % self.knots == 0):
            raise ValueError(f"depth must be a positive multiple of knots = {self.knots}, got {depth!r}")
        return replace(self, method="euler", steps_per_knot=depth // self.knots)

    def init(self, generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> Params:
        times = knot_times(self.knots, self.horizon, self.interpolation)
        params = {**self.init_frame(generator), **self.init_stages(generator, times)}
        return {k: v.to(dtype=dtype, device=device) for k, v in params.items()}

    def _field_at(self, params: Params, s: int) -> Callable[[int], Callable[[Tensor, Tensor], Tensor]]:
        act, inv = self.act, 1.0 / self.knot_step
        W, b, V = (params[f"{n}{s}"].unbind(1) for n in ("W", "b", "V"))

        def at(p: int) -> Callable[[Tensor, Tensor], Tensor]:
            if self.interpolation == "constant":
                return lambda t, z: field(W[p], b[p], V[p], z, act)
            t0 = p * self.knot_step

            def f(t: Tensor, z: Tensor) -> Tensor:
                u = (t - t0) * inv
                return field(W[p] + u * (W[p + 1] - W[p]), b[p] + u * (b[p + 1] - b[p]),
                             V[p] + u * (V[p + 1] - V[p]), z, act)

            return f

        return at

    def forward(self, params: Params, x: Tensor) -> Tensor:
        """Logits (B, n, k) for images x of shape (B, n, c, H, W)."""
        z = self.embed(params, x)
        for s in range(self.stages):
            z = self.into_stage(params, z, s)
            used = [params[f"{n}{s}"] for n in ("W", "b", "V")] if self.adjoint else None
            z = knot_flow(self._field_at(params, s), z, knots=self.knots, knot_step=self.knot_step,
                          method=self.method, steps_per_knot=self.steps_per_knot, rtol=self.rtol,
                          atol=self.atol, adjoint_params=used)
        return self.read(params, z)
