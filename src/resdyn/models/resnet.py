"""The discrete ResNet: z_{k+1} = z_k + h F_k(z_k), k = 0..L-1, h = T / L.

z_0 = A x + c embeds the input, g(z_L) = R z_L + r reads out, and F_k is the residual map of
layer k (``resdyn.models.blocks``). With ``tied=True`` every layer shares one theta: the Euler
scheme of an autonomous ODE. With ``weight_init='smooth'`` (default) theta_k = theta(t_k), t_k = k h, for
one smooth random path theta, so networks of every depth L approximate the same ODE.

The untied two-layer network is :func:`resdyn.models.reference.reference_resnet`; the layer loop
here runs the reference's residual layer (through ``blocks.residual_map``), and the fast paths of
``forward`` (the native kernel, the fused stack) are tested against the reference
(tests/test_reference.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .._checks import check_bool, check_int
from .base import Params
from .blocks import ResidualOptions, embed, layer_params, readout, residual_map
from .fused import residual_stack
from .native import native_resnet
from .paths import knot_layer_weights, layer_times, layers_from_knots

__all__ = ["ResNet"]


@dataclass(frozen=True)
class ResNet(ResidualOptions):
    """Discrete ResNet of depth L (``depth``); every option of ResidualOptions applies."""

    depth: int = 8
    tied: bool = False
    family = "resnet"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("depth", self.depth, 1)
        check_bool("tied", self.tied)

    @property
    def step(self) -> float:
        """h = T / L."""
        return self.horizon / self.depth

    def layer_times(self) -> Tensor:
        """t_k = k h for k = 0..L-1 (a single time, 0, when tied)."""
        return layer_times(self.depth, self.horizon, self.tied)

    def init(self, generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> Params:
        params = {**self.init_io(generator), **self.init_layers(generator, self.layer_times())}
        return {k: v.to(dtype=dtype, device=device) for k, v in params.items()}

    def deepened(self, params: Params, depth: int) -> tuple[ResNet, Params]:
        """The network of depth L' = r L (r >= 1 an integer) whose layer path continues this one's:
        layer j, at t'_j = j T / L', takes the linear interpolation of the path (t_k, theta_k) at
        t'_j, theta'_j = theta_p + s (theta_{p+1} - theta_p) with p + s = j L / L', held at
        theta_{L-1} past the last layer time t_{L-1} = T - h. The embedding and readout are
        shared. Both networks are explicit Euler schemes of z' = F(z; theta(t)) for paths that
        agree at the coarse layer times, so their outputs differ by O(h) (the starting point of
        multilevel training: Chang et al., ICLR 2018). ``params`` keep their model axis."""
        check_int("depth", depth, 1)
        if self.tied:
            raise ValueError("deepened: a tied ResNet has one layer for every depth; change depth instead")
        if depth % self.depth:
            raise ValueError(f"deepened: depth must be a multiple of {self.depth}, got {depth}")
        left, right, s = knot_layer_weights(self.depth, depth, "linear")
        right = right.clamp(max=self.depth - 1)
        names = {"W", "b", "V"} if self.block == "two_layer" else {"K", "b"}
        out = {k: layers_from_knots(v, left, right, s) if k in names else v.clone()
               for k, v in params.items()}
        return replace(self, depth=depth), out

    def states(self, params: Params, x: Tensor) -> list[Tensor]:
        """[z_0, z_1, ..., z_L], each of shape (B, n, m)."""
        act, h = self.act, self.step
        layers = layer_params(params, self.block)
        z = embed(params, x.flatten(2))
        out = [z]
        for k in range(self.depth):
            z = z + h * residual_map(layers[0 if self.tied else k], z, act)
            out.append(z)
        return out

    def forward_chunks(self, params: Params, x: Tensor, owner: Tensor) -> Tensor | None:
        """Outputs of chunk b of ``x`` under model ``owner[b]`` through the native kernel, which
        reads each model's weights in place; None where it does not apply
        (``models.base.forward_chunks`` then gathers the weights per chunk)."""
        if self.block == "two_layer" and not self.tied:
            return native_resnet(params, x.flatten(2), self.step, self.act, owner)
        return None

    def forward(self, params: Params, x: Tensor) -> Tensor:
        """Outputs g(z_L) of shape (B, n, k) for inputs ``x`` of shape (B, n, d). The untied
        two-layer network runs through the native kernel on the CPU, else its stack as one fused
        node (:mod:`resdyn.models.fused`)."""
        act, h = self.act, self.step
        if self.block == "two_layer" and not self.tied:
            out = native_resnet(params, x.flatten(2), h, act)
            if out is not None:
                return out
            z = embed(params, x.flatten(2))
            return readout(params, residual_stack(z, params["W"], params["b"], params["V"], h, act))
        z = embed(params, x.flatten(2))
        layers = layer_params(params, self.block)
        for k in range(self.depth):
            z = z + h * residual_map(layers[0 if self.tied else k], z, act)
        return readout(params, z)
