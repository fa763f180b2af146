"""The staged image ResNet in discrete time: z_{k+1} = z_k + h F_s(z_k; theta_{s,k}), h = T / L.

A stem E downsamples the image to a C-channel state; each of the S stages is a depth-L Euler
discretisation of dz/dt = F_s(z; theta_s(t)) on a state of fixed size; a 4x4 stride-2
convolution leads from one stage to the next; the readout is a linear map of the state averaged
over a G x G grid of pixel cells (G = ``readout_grid``; G = 1: the mean over pixels; see
:mod:`resdyn.models.image_blocks` for every map and shape). With the default
``downsample=2`` a 28x28 digit becomes a 7x7 state, the shape of torchdiffeq's ``odenet_mnist``.

Parameters of one model (no model axis): ``stem{i}``/``stem{i}_b`` (stem convolutions),
``W{s}``, ``V{s}`` of shape (L, C_s, C_s, 3, 3) and ``b{s}`` (L, C_s) (the layers of stage s,
or one layer when ``tied``), ``Q{s}``/``q{s}`` (transition into stage s >= 1), ``R`` (k, C_last G^2)
and ``r`` (k). The continuous-time version, :class:`~resdyn.models.image_ode_resnet.ImageODEResNet`,
shares all of them but the layer axis, which there indexes knots of theta(t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._checks import check_bool, check_choice, check_int
from .activations import ACTIVATIONS, Activation, get_activation
from .base import Params
from .blocks import check_path_options
from .image_blocks import field, image_state, init_conv, pool_readout, stem, stem_shapes, transition
from .paths import layer_times, sample_layer_weights

__all__ = ["ImageOptions", "ImageResNet"]


@dataclass(frozen=True)
class ImageOptions:
    """Options both image families share.

    in_channels, out_dim: image channels and classes. stem_channels: width of the stem's hidden
    convolutions. channels: C, the state's channels in stage 0 (stage s has C 2^s). downsample: D,
    the stem's stride-2 convolutions. stages: S. horizon: T. activation (and tau): the residual
    map's; stem_activation: the stem's. weight_init: 'smooth' (one random path theta(t) per stage,
    sampled at the layer times) or 'iid'; residual filters have std init_scale / sqrt(9 C_s),
    biases bias_scale; modes: cosine modes of a smooth path. readout_grid: G, the grid the
    readout averages the final state over (G = 1: the mean over pixels; G = 7 on the 7x7 state of
    a 28x28 digit: every pixel of it, C 49 features).
    """

    #: Fields added after stores existed, with their defaults: a model at these is described
    #: without them (``model_to_dict``), so the cells of older stores keep their ids.
    later_fields: ClassVar[dict[str, Any]] = {"readout_grid": 1}

    in_channels: int = 1
    out_dim: int = 10
    stem_channels: int = 32
    channels: int = 64
    downsample: int = 2
    stages: int = 1
    horizon: float = 1.0
    activation: str = "relu"
    tau: float = 0.5
    stem_activation: str = "relu"
    weight_init: str = "smooth"
    init_scale: float = 1.0
    bias_scale: float = 0.0
    modes: int = 4
    readout_grid: int = 1

    def __post_init__(self) -> None:
        check_int("in_channels", self.in_channels, 1)
        check_int("readout_grid", self.readout_grid, 1)
        check_int("out_dim", self.out_dim, 1)
        check_int("stem_channels", self.stem_channels, 1)
        check_int("channels", self.channels, 1)
        check_int("downsample", self.downsample, 0)
        check_int("stages", self.stages, 1)
        check_choice("stem_activation", self.stem_activation, ACTIVATIONS)
        check_path_options(self)

    @property
    def act(self) -> Activation:
        return get_activation(self.activation, tau=self.tau)

    @property
    def stem_act(self) -> Activation:
        return get_activation(self.stem_activation, tau=self.tau)

    def stage_channels(self, s: int) -> int:
        return self.channels * 2**s

    @property
    def n_stem(self) -> int:
        return len(stem_shapes(self.in_channels, self.stem_channels, self.channels, self.downsample))

    def init_frame(self, g: torch.Generator) -> Params:
        """Stem, transitions and readout of one model, float64, no model axis."""
        out: Params = {}
        shapes = stem_shapes(self.in_channels, self.stem_channels, self.channels, self.downsample)
        for i, (ci, co, k, _) in enumerate(shapes):
            # The last stem map is linear (an embedding): unit gain keeps z_0 at the input's scale.
            out[f"stem{i}"] = init_conv(g, co, ci, k, gain=1.0 if i == len(shapes) - 1 else math.sqrt(2))
            out[f"stem{i}_b"] = torch.zeros(co, dtype=torch.float64)
        for s in range(1, self.stages):
            ci, co = self.stage_channels(s - 1), self.stage_channels(s)
            out[f"Q{s}"] = init_conv(g, co, ci, 4, gain=1.0)
            out[f"q{s}"] = torch.zeros(co, dtype=torch.float64)
        d, k = self.stage_channels(self.stages - 1) * self.readout_grid**2, self.out_dim
        out["R"] = torch.randn(k, d, generator=g, dtype=torch.float64) / math.sqrt(d)
        out["r"] = torch.zeros(k, dtype=torch.float64)
        return out

    def init_stages(self, g: torch.Generator, times: Tensor) -> Params:
        """Residual weights of every stage at the layer (or knot) times ``times``."""
        out: Params = {}
        for s in range(self.stages):
            C = self.stage_channels(s)
            std = self.init_scale / math.sqrt(9 * C)

            def path(shape: tuple[int, ...], sd: float) -> Tensor:
                return sample_layer_weights(g, shape, sd, times, self.horizon, self.weight_init,
                                            self.modes)

            out[f"W{s}"] = path((C, C, 3, 3), std)
            out[f"b{s}"] = path((C,), self.bias_scale)
            out[f"V{s}"] = path((C, C, 3, 3), std)
        return out

    def embed(self, params: Params, x: Tensor) -> Tensor:
        """z_0 = E(x) as the stacked state (n, B C, H', W') for inputs (B, n, c, H, W)."""
        if x.dim() != 5:
            raise ValueError(f"{type(self).__name__} expects inputs (B, n, channels, H, W), "
                             f"got {tuple(x.shape)}")
        return stem(params, image_state(x), self.n_stem, self.stem_act)

    def into_stage(self, params: Params, z: Tensor, s: int) -> Tensor:
        return z if s == 0 else transition(params, z, s)

    def read(self, params: Params, z: Tensor) -> Tensor:
        return pool_readout(params, z, params["R"].shape[0], self.readout_grid)


@dataclass(frozen=True)
class ImageResNet(ImageOptions):
    """Discrete-time staged image ResNet (module docstring). depth: L layers per stage, step
    h = T / L. tied: one layer's weights shared by every layer of a stage."""

    depth: int = 8
    tied: bool = False
    family = "image_resnet"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("depth", self.depth, 1)
        check_bool("tied", self.tied)

    @property
    def step(self) -> float:
        return self.horizon / self.depth

    def init(self, generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> Params:
        times = layer_times(self.depth, self.horizon, self.tied)
        params = {**self.init_frame(generator), **self.init_stages(generator, times)}
        return {k: v.to(dtype=dtype, device=device) for k, v in params.items()}

    def forward(self, params: Params, x: Tensor) -> Tensor:
        """Logits (B, n, k) for images x of shape (B, n, c, H, W)."""
        act, h = self.act, self.step
        z = self.embed(params, x)
        for s in range(self.stages):
            z = self.into_stage(params, z, s)
            W, b, V = (params[f"{n}{s}"].unbind(1) for n in ("W", "b", "V"))
            for k in range(self.depth):
                l = 0 if self.tied else k
                z = z + h * field(W[l], b[l], V[l], z, act)
        return self.read(params, z)
