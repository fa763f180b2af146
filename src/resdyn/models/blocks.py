"""Pieces shared by the residual families: embedding, residual maps, readout, common options.

Shapes (B models or chunks, n samples, d inputs, m state width, p hidden width, k outputs, L
layers or knots):

    A (B, m, d), c (B, m)                          z_0 = A x + c
    two_layer: W (B, L, p, m), b (B, L, p), V (B, L, m, p)
                                                   F_l(z) = V_l act(W_l z + b_l)
    one_layer: K (B, L, m, m), b (B, L, m)         F_l(z) = K_l act(z) + b_l
    R (B, k, m), r (B, k)                          g(z) = R z + r
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_choice, check_int, check_positive
from .activations import ACTIVATIONS, Activation, get_activation
from .base import Params
from .paths import sample_layer_weights
from .reference import embed_rows, readout_rows, residual_layer

__all__ = [
    "BLOCKS",
    "INITS",
    "ResidualOptions",
    "check_path_options",
    "embed",
    "layer_params",
    "readout",
    "residual_map",
]

BLOCKS = ("two_layer", "one_layer")
INITS = ("smooth", "iid")


def check_path_options(opts: object) -> None:
    """Check the options every residual family shares: horizon, activation (and tau),
    weight_init, init_scale, bias_scale, modes."""
    check_positive("horizon", opts.horizon)
    check_choice("activation", opts.activation, ACTIVATIONS)
    check_choice("weight_init", opts.weight_init, INITS)
    check_positive("init_scale", opts.init_scale, allow_zero=True)
    check_positive("bias_scale", opts.bias_scale, allow_zero=True)
    check_int("modes", opts.modes, 1)
    get_activation(opts.activation, tau=opts.tau)  # validates tau


@dataclass(frozen=True)
class ResidualOptions:
    """Options every residual family shares.

    in_dim, out_dim: input and output sizes d and k. width: state width m. hidden: inner width p
    of the two-layer block (defaults to m). horizon: T > 0. activation, tau: see
    ``resdyn.models.activations``. block: 'two_layer' F = V act(W z + b) or 'one_layer'
    F = K act(z) + b. weight_init: 'smooth' (one random path theta(t) sampled at the layer times, the
    default for depth studies) or 'iid' (independent layers, the contrast). init_scale: weights
    have standard deviation init_scale / sqrt(fan_in); bias_scale: that of the block biases.
    modes: number of cosine modes of a smooth path.
    """

    in_dim: int = 2
    out_dim: int = 2
    width: int = 16
    hidden: int | None = None
    horizon: float = 1.0
    activation: str = "tanh"
    tau: float = 0.5
    block: str = "two_layer"
    weight_init: str = "smooth"
    init_scale: float = 1.0
    bias_scale: float = 0.5
    modes: int = 4

    def __post_init__(self) -> None:
        check_int("in_dim", self.in_dim, 1)
        check_int("out_dim", self.out_dim, 1)
        check_int("width", self.width, 1)
        if self.hidden is not None:
            check_int("hidden", self.hidden, 1)
        check_choice("block", self.block, BLOCKS)
        check_path_options(self)

    @property
    def act(self) -> Activation:
        return get_activation(self.activation, tau=self.tau)

    @property
    def p(self) -> int:
        return self.width if self.hidden is None else self.hidden

    def init_io(self, g: torch.Generator) -> Params:
        """Embedding and readout of one model, float64, no leading axis."""
        d, m, k = self.in_dim, self.width, self.out_dim
        return {
            "A": torch.randn(m, d, generator=g, dtype=torch.float64) / math.sqrt(d),
            "c": torch.zeros(m, dtype=torch.float64),
            "R": torch.randn(k, m, generator=g, dtype=torch.float64) / math.sqrt(m),
            "r": torch.zeros(k, dtype=torch.float64),
        }

    def init_layers(self, g: torch.Generator, times: Tensor, init: str | None = None) -> Params:
        """Residual parameters at the layer times ``times`` (leading axis len(times))."""
        init = self.weight_init if init is None else init
        m, p, s = self.width, self.p, self.init_scale
        T, J = self.horizon, self.modes

        def draw(shape: tuple[int, ...], std: float) -> Tensor:
            return sample_layer_weights(g, shape, std, times, T, init, J)

        if self.block == "two_layer":
            return {
                "W": draw((p, m), s / math.sqrt(m)),
                "b": draw((p,), self.bias_scale),
                "V": draw((m, p), s / math.sqrt(p)),
            }
        return {"K": draw((m, m), s / math.sqrt(m)), "b": draw((m,), self.bias_scale)}


def embed(params: Params, x: Tensor) -> Tensor:
    """z_0 = A x + c for inputs ``x`` of shape (B, n, d) (:mod:`resdyn.models.reference`)."""
    return embed_rows(params["A"], params["c"], x)


def readout(params: Params, z: Tensor) -> Tensor:
    """g(z) = R z + r (:mod:`resdyn.models.reference`)."""
    return readout_rows(params["R"], params["r"], z)


def layer_params(params: Params, block: str) -> list[Params]:
    """The residual parameters of every layer (or knot): a list of dicts of (B, ...) tensors.

    One ``unbind`` per tensor rather than one slice per layer: the backward of a slice allocates
    a zero tensor of the whole stack, the backward of ``unbind`` is a single ``stack``.
    """
    names = ("W", "b", "V") if block == "two_layer" else ("K", "b")
    cols = {n: params[n].unbind(1) for n in names}
    return [{n: cols[n][l] for n in names} for l in range(params[names[0]].shape[1])]


def residual_map(theta: Params, z: Tensor, act: Activation) -> Tensor:
    """F(z; theta) for one layer's parameters ``theta`` (see the module docstring); the two-layer
    map is the reference's (:func:`resdyn.models.reference.residual_layer`)."""
    if "W" in theta:
        return residual_layer(z, theta["W"], theta["b"], theta["V"], act)
    return torch.baddbmm(theta["b"].unsqueeze(1), act(z), theta["K"].transpose(1, 2))
