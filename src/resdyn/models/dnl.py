"""The dense non-local (DNL) family: every layer reads every earlier layer (docs/dnl.md).

resdyn's formulation (a reconstruction, not the paper's equations), with h = T / N, t_k = k h:

    z_0 = A x + c,
    form A:  z_k = z_0 + h sum_{j<k} ( K_{k,j}[act(z_j)] + b_{k,j} ),          k = 1..N,
    form B:  z_k = z_0 + h sum_{j<k} act( K_{k,j}[z_j] + b_{k,j} ),
    output   g(z_N) = R z_N + r.

K_{k,j} is a within-layer operator (``resdyn.models.dnl_ops``: dense matrix, convolution,
Gaussian integral kernel, attention-like kernel) with one weight W_{k,j} per pair; ``scaled=False``
replaces h by 1 (the unscaled DenseNet). Parameters of one model (packed pairs, P = N (N + 1) / 2,
index of (k, j) = k (k - 1) / 2 + j, ``resdyn.models.volterra.pair_index``):

    A (m, d), c (m)            embedding (the names and shapes of resdyn.models.ResNet)
    K (P, C, F), b (P, m)      pair weights and biases
    Wq, Wk (D, C)              the attention operator's shared parameters (operator='attention')
    R (k, m), r (k)            readout

This is the left-rectangle rule for the Volterra equation z(t) = z_0 + int_0^t (K(t, s)[act(z(s))]
+ b(t, s)) ds (``resdyn.models.volterra``). Special cases: with K_{k,j} = K_j and b_{k,j} = b_j
(no dependence on k) and the dense operator, z_k - z_{k-1} = h (K_{k-1} act(z_{k-1}) + b_{k-1}):
``ResNet(block='one_layer')`` with the same A, c, K, b, R, r (see :meth:`DNLNet.from_resnet`). A
pre-activation DenseNet layer W_k act([z_0, ..., z_{k-1}]) is the sum over blocks
sum_j W_{k,j} act(z_j), W_k = [W_{k,0}, ..., W_{k,k-1}].
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_bool, check_choice, check_int, check_positive
from .activations import ACTIVATIONS, Activation, get_activation
from .base import Params
from .blocks import embed, readout
from .dnl_ops import OPERATORS, Operator
from .volterra import FORMS, IMPLICIT, RULES, SmoothKernel, march, p1_at_grid, pair_count, pair_nodes

__all__ = ["INITS", "DNLNet", "VolterraDNL"]

INITS = ("smooth", "iid", "zero")


@dataclass(frozen=True)
class DNLNet:
    """Discrete DNL network of depth N (``depth``); see the module docstring.

    in_dim d, out_dim k, width m, horizon T, activation (and tau), form 'A' or 'B', operator
    ('dense', 'conv', 'nonlocal', 'attention') with positions, kernel_size, bandwidth, normalize,
    att_dim (``resdyn.models.dnl_ops.Operator``), scaled (h = T / N if true, 1 if false),
    weight_init: 'smooth' (K_{k,j} = K(t_k, t_j) for one smooth random kernel on the triangle,
    the same function for every N), 'iid' (independent pairs) or 'zero'; init_scale: weights have
    standard deviation init_scale / sqrt(F); bias_scale: that of the pair biases; modes: cosine
    modes per variable of the smooth kernel.
    """

    in_dim: int = 2
    out_dim: int = 2
    width: int = 16
    depth: int = 8
    horizon: float = 1.0
    activation: str = "tanh"
    tau: float = 0.5
    form: str = "A"
    operator: str = "dense"
    positions: int = 1
    kernel_size: int = 3
    bandwidth: float = 0.1
    normalize: bool = False
    att_dim: int | None = None
    scaled: bool = True
    weight_init: str = "smooth"
    init_scale: float = 1.0
    bias_scale: float = 0.5
    modes: int = 4
    family = "dnl"

    def __post_init__(self) -> None:
        check_int("in_dim", self.in_dim, 1)
        check_int("out_dim", self.out_dim, 1)
        check_int("width", self.width, 1)
        check_int("depth", self.depth, 1)
        check_positive("horizon", self.horizon)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("form", self.form, FORMS)
        check_choice("operator", self.operator, OPERATORS)
        check_choice("weight_init", self.weight_init, INITS)
        check_positive("init_scale", self.init_scale, allow_zero=True)
        check_positive("bias_scale", self.bias_scale, allow_zero=True)
        check_int("modes", self.modes, 1)
        check_bool("scaled", self.scaled)
        get_activation(self.activation, tau=self.tau)
        _ = self.op  # validates the operator options

    @property
    def act(self) -> Activation:
        return get_activation(self.activation, tau=self.tau)

    @property
    def op(self) -> Operator:
        return Operator(self.operator, self.width, self.positions, self.kernel_size, self.bandwidth,
                        self.normalize, self.att_dim)

    @property
    def step(self) -> float:
        """h = T / N."""
        return self.horizon / self.depth

    @property
    def scale(self) -> float:
        """The factor of the history sum: h, or 1 when ``scaled`` is false."""
        return self.step if self.scaled else 1.0

    @property
    def num_pairs(self) -> int:
        return pair_count(self.depth)

    def pair_times(self) -> tuple[Tensor, Tensor]:
        """(t_k, t_j) of every packed pair j < k, float64."""
        k, j = pair_nodes(self.depth)
        return k.double() * self.step, j.double() * self.step

    def prolong(self, params: Params, deeper: DNLNet) -> Params:
        """Parameters of ``deeper`` (this network with depth N' a multiple of N) holding Pi theta_N:
        the pair controls K and b are the P1 extension of this network's (``p1_at_grid``) at the
        pairs of grid N'; every other parameter (embedding, readout, operator) is copied."""
        if dataclasses.replace(deeper, depth=self.depth) != self or deeper.depth % self.depth:
            raise ValueError(f"prolong: the deeper network must equal this one but for a depth that is a "
                             f"multiple of {self.depth}; got {deeper!r}")
        return {k: (p1_at_grid(v, self.depth, deeper.depth) if k in ("K", "b") else v)
                for k, v in params.items()}

    def init(self, generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> Params:
        d, m, k = self.in_dim, self.width, self.out_dim
        op = self.op
        C, F = op.channels, op.feature_dim
        params: Params = {
            "A": torch.randn(m, d, generator=generator, dtype=torch.float64) / math.sqrt(d),
            "c": torch.zeros(m, dtype=torch.float64),
        }
        t, s = self.pair_times()

        def draw(shape: tuple[int, ...], std: float) -> Tensor:
            if self.weight_init == "smooth":
                return SmoothKernel.sample(generator, shape, std, self.horizon, self.modes)(t, s)
            if self.weight_init == "iid":
                return std * torch.randn((len(t), *shape), generator=generator, dtype=torch.float64)
            return torch.zeros((len(t), *shape), dtype=torch.float64)

        params["K"] = draw((C, F), self.init_scale / math.sqrt(F))
        params["b"] = draw((m,), self.bias_scale)
        params.update(op.init(generator))
        params["R"] = torch.randn(k, m, generator=generator, dtype=torch.float64) / math.sqrt(m)
        params["r"] = torch.zeros(k, dtype=torch.float64)
        return {key: v.to(dtype=dtype, device=device) for key, v in params.items()}

    def _op_params(self, params: Params) -> Params:
        return {n: params[n] for n in self.op.param_names}

    def states(self, params: Params, x: Tensor) -> list[Tensor]:
        """[z_0, z_1, ..., z_N], each of shape (B, n, m)."""
        z0 = embed(params, x.flatten(2))
        out, _ = march(z0, params["K"], params["b"], self.depth, self.scale, self.act, form=self.form,
                       op=self.op, op_params=self._op_params(params))
        return out

    def forward(self, params: Params, x: Tensor) -> Tensor:
        """Outputs g(z_N) of shape (B, n, k) for inputs ``x`` of shape (B, n, d)."""
        return readout(params, self.states(params, x)[-1])

    @classmethod
    def from_resnet(cls, resnet, params: Params) -> tuple[DNLNet, Params]:
        """The DNL network equal to ``resnet`` (a ``ResNet`` with block='one_layer', untied) and its
        parameters: K_{k,j} = K_j, b_{k,j} = b_j; A, c, R, r unchanged."""
        if getattr(resnet, "block", None) != "one_layer" or getattr(resnet, "tied", True):
            raise ValueError("from_resnet needs a ResNet with block='one_layer' and tied=False")
        model = cls(in_dim=resnet.in_dim, out_dim=resnet.out_dim, width=resnet.width,
                    depth=resnet.depth, horizon=resnet.horizon, activation=resnet.activation,
                    tau=resnet.tau)
        _, j = pair_nodes(resnet.depth)
        j = j.to(params["K"].device)
        out = {n: params[n] for n in ("A", "c", "R", "r")}
        out["K"] = params["K"].index_select(1, j)
        out["b"] = params["b"].index_select(1, j)
        return model, out


@dataclass(frozen=True)
class VolterraDNL(DNLNet):
    """The continuous-time DNL model: the Volterra equation of ``resdyn.models.volterra`` with
    kernels K, b the P1 extensions (to the triangle) of the knot values ``K``, ``b`` of a DNLNet of
    depth N = ``depth`` (same parameters), solved on ``steps`` (a multiple of N; default N) steps
    by ``rule`` ('rectangle' or 'trapezoid'; implicit steps by ``implicit``, ``tol``, ``max_iter``).

    With steps = N and rule 'rectangle' it equals the DNLNet. ``scaled`` must stay true.
    """

    steps: int | None = None
    rule: str = "trapezoid"
    implicit: str = "fixed_point"
    tol: float = 1e-13
    max_iter: int = 100
    family = "dnl_volterra"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps is not None:
            check_int("steps", self.steps, 1)
            if self.steps % self.depth:
                raise ValueError(f"steps must be a multiple of depth, got steps={self.steps}, "
                                 f"depth={self.depth}")
        check_choice("rule", self.rule, RULES)
        check_choice("implicit", self.implicit, IMPLICIT)
        if not self.scaled:
            raise ValueError("VolterraDNL needs scaled=True (an integral has the factor h)")

    @property
    def solver_steps(self) -> int:
        return self.depth if self.steps is None else self.steps

    def states(self, params: Params, x: Tensor) -> list[Tensor]:
        """[z(t_0), ..., z(t_S)] on the solver grid t_i = i T / S, S = ``solver_steps``."""
        S, diag = self.solver_steps, self.rule == "trapezoid"
        z0 = embed(params, x.flatten(2))
        W = p1_at_grid(params["K"], self.depth, S, diag)
        b = p1_at_grid(params["b"], self.depth, S, diag)
        out, _ = march(z0, W, b, S, self.horizon / S, self.act, form=self.form, op=self.op,
                       op_params=self._op_params(params), rule=self.rule, implicit=self.implicit,
                       tol=self.tol, max_iter=self.max_iter)
        return out
