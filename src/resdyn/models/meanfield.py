"""The mean-field scaled ResNet (family 3 of DESIGN.md; symbols as in docs/meanfield.md).

Encoder: L layers of M particles theta_{l,m} = (u, w, b) in R^d x R^d x R (particle dimension
p = 2d + 1), state z in R^d, z_0 = x,

    z_{l+1} = z_l + alpha / (L M) sum_m u_{l,m} sigma(w_{l,m} . z_l + b_{l,m}),   l = 0..L-1.

Predictor: K particles omega_k = (a, v, c) in R x R^d x R (particle dimension q = d + 2),

    f(x) = beta / K sum_k a_k sigma(v_k . z_L + c_k).

Every particle is drawn i.i.d. from the standard Gaussian N(0, I). With ``tied=True`` the L layers
share one set of M particles: the Euler scheme with L steps of the autonomous neural ODE
dz/ds = alpha / M sum_m u_m sigma(w_m . z + b_m), s in [0, 1].

Training uses the squared loss (1 / 2n) sum_i (f(x_i) - y_i)^2 on labels y in {-1, +1} (the
engine's ``loss='squared'`` with ``out_dim = 1``). :meth:`MeanFieldResNet.lr_scales` gives the
mean-field learning-rate scaling: a base rate eta becomes eta L M for the encoder particles (eta M
when tied) and eta K for the predictor particles, so that plain gradient descent
(``optimizer='sgd'``, momentum 0) follows the particle gradient flow
d theta_{l,m}/dt = -L M dL/d theta_{l,m}, d omega_k/dt = -K dL/d omega_k, whose width-to-infinity
limit is the Wasserstein gradient flow of the mean-field PDE. Under Adam the scales still multiply
the rate, but Adam's per-coordinate normalisation removes the gradient's 1/(LM) and 1/K, so Adam
runs are not the mean-field dynamics; the reproduction uses Adam with ``mean_field_lr=False``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_bool, check_choice, check_int, check_positive
from .activations import ACTIVATIONS, Activation, get_activation
from .base import Params

__all__ = ["ENCODER_PARAMS", "PREDICTOR_PARAMS", "MeanFieldResNet"]

ENCODER_PARAMS = ("u", "w", "b")
PREDICTOR_PARAMS = ("a", "v", "c")


@dataclass(frozen=True)
class MeanFieldResNet:
    """Mean-field ResNet; see the module docstring.

    in_dim: d (input and state dimension). depth: L. width: M, encoder particles per layer.
    predictor_width: K, predictor particles. alpha, beta: the encoder and output scalings.
    activation: sigma (tanh by default; the bounds of docs/meanfield.md need a bounded Lipschitz
    sigma). tied: one set of M particles shared by all L layers (the Euler neural ODE).
    mean_field_lr: whether :meth:`lr_scales` applies the rates eta L M and eta K.

    Parameters of one model: u, w (L', M, d), b (L', M), a (K,), v (K, d), c (K,), with L' = L,
    or 1 when tied.
    """

    in_dim: int = 2
    depth: int = 10
    width: int = 256
    predictor_width: int = 256
    alpha: float = 1.0
    beta: float = 1.0
    activation: str = "tanh"
    tied: bool = False
    mean_field_lr: bool = True
    family = "meanfield"

    def __post_init__(self) -> None:
        check_int("in_dim", self.in_dim, 1)
        check_int("depth", self.depth, 1)
        check_int("width", self.width, 1)
        check_int("predictor_width", self.predictor_width, 1)
        check_positive("alpha", self.alpha, allow_zero=True)
        check_positive("beta", self.beta)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_bool("tied", self.tied)
        check_bool("mean_field_lr", self.mean_field_lr)

    # -- shape ---------------------------------------------------------------------------------
    @property
    def out_dim(self) -> int:
        """A single output f(x); labels are the +-1 targets of the squared loss."""
        return 1

    @property
    def act(self) -> Activation:
        return get_activation(self.activation)

    @property
    def encoder_layers(self) -> int:
        """Number of distinct encoder particle sets: L, or 1 when tied."""
        return 1 if self.tied else self.depth

    @property
    def encoder_particle_dim(self) -> int:
        """p = 2d + 1, the dimension of theta = (u, w, b)."""
        return 2 * self.in_dim + 1

    @property
    def predictor_particle_dim(self) -> int:
        """q = d + 2, the dimension of omega = (a, v, c)."""
        return self.in_dim + 2

    def lr_scales(self) -> dict[str, float]:
        """Per-parameter rate multipliers: L M (M when tied) for u, w, b and K for a, v, c."""
        if not self.mean_field_lr:
            return {}
        enc = float(self.width * (1 if self.tied else self.depth))
        return {**dict.fromkeys(ENCODER_PARAMS, enc),
                **dict.fromkeys(PREDICTOR_PARAMS, float(self.predictor_width))}

    def gram_groups(self) -> dict[str, tuple[str, ...]]:
        """The parameter groups of the Gram matrices G1 (encoder) and G2 (predictor)."""
        return {"G1": ENCODER_PARAMS, "G2": PREDICTOR_PARAMS}

    # -- parameters ----------------------------------------------------------------------------
    def init(self, generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> Params:
        """One model's particles, i.i.d. N(0, I), drawn in float64 on the CPU in a fixed order."""
        Lp, M, K, d = self.encoder_layers, self.width, self.predictor_width, self.in_dim

        def draw(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=generator, dtype=torch.float64)

        params = {"u": draw(Lp, M, d), "w": draw(Lp, M, d), "b": draw(Lp, M),
                  "a": draw(K), "v": draw(K, d), "c": draw(K)}
        return {k: v.to(dtype=dtype, device=device) for k, v in params.items()}

    def encoder_particles(self, params: Params) -> Tensor:
        """theta = (u, w, b) of every encoder particle: shape (B, L', M, 2d + 1)."""
        return torch.cat([params["u"], params["w"], params["b"].unsqueeze(-1)], dim=-1)

    def predictor_particles(self, params: Params) -> Tensor:
        """omega = (a, v, c) of every predictor particle: shape (B, K, d + 2)."""
        return torch.cat([params["a"].unsqueeze(-1), params["v"], params["c"].unsqueeze(-1)], dim=-1)

    # -- forward -------------------------------------------------------------------------------
    def encode(self, params: Params, x: Tensor) -> Tensor:
        """z_L for inputs ``x`` of shape (B, n, d): shape (B, n, d)."""
        act, L, M = self.act, self.depth, self.width
        scale = self.alpha / (L * M)
        u, w, b = (params[k].unbind(1) for k in ENCODER_PARAMS)
        z = x
        for l in range(L):
            j = 0 if self.tied else l
            pre = torch.baddbmm(b[j].unsqueeze(1), z, w[j].transpose(1, 2))  # (B, n, M)
            z = z + scale * torch.bmm(act(pre), u[j])
        return z

    def predict(self, params: Params, z: Tensor) -> Tensor:
        """f = beta / K sum_k a_k sigma(v_k . z + c_k) for states ``z`` (B, n, d): shape (B, n, 1)."""
        pre = torch.baddbmm(params["c"].unsqueeze(1), z, params["v"].transpose(1, 2))  # (B, n, K)
        # A product and a sum, not a bmm with a (K, 1) matrix: bmm's matrix-vector kernels differ
        # with the batch size B, which would make a model's rounding depend on its batch-mates.
        out = (self.act(pre) * params["a"].unsqueeze(1)).sum(-1, keepdim=True)
        return (self.beta / self.predictor_width) * out

    def forward(self, params: Params, x: Tensor) -> Tensor:
        """Outputs f(x) of shape (B, n, 1) for inputs ``x`` of shape (B, n, d)."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"x must have last dimension in_dim = {self.in_dim}, got shape {tuple(x.shape)}")
        return self.predict(params, self.encode(params, x))
