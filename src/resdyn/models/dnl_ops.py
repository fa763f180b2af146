"""Within-layer operators of the dense non-local (DNL) family (docs/dnl.md, section 2).

A state z in R^m is a field of C channels at M positions, stored position-major: z[y C + c] is
channel c at position y, m = M C (the dense operator has M = 1, C = m). Every operator of a pair
(k, j) of layers factors as

    (K_{k,j}[u])(y) = W_{k,j} (Phi u)(y),      W_{k,j} in R^{C x F},

where Phi: R^{M x C} -> R^{M x F} is shared by all pairs (it may depend on u and on the operator's
own parameters) and W_{k,j} is the pair's weight. So the history sum of a layer, sum_j K_{k,j}[u_j],
needs Phi u_j once per earlier layer j, not once per pair.

==========  ====  ==============================================================================
kind        F     (Phi u)(y)
==========  ====  ==============================================================================
dense       m     u (M = 1): K u = W u, a dense matrix.
conv        C s   (u(y - r), ..., u(y + r)) with zero padding, s = 2 r + 1 (``kernel_size``),
                  ordered c s + o: W viewed as (C, C, s) is a conv1d weight and
                  K u (y) = sum_{c, o} W[:, c, o] u_c(y + o - r) (cross-correlation). Local.
nonlocal    C     sum_{y'} w_{y'} G(y, y') u(y'): a Gaussian integral kernel over positions
                  p_y = (y + 1/2) / M of Omega = [0, 1], G(y, y') = exp(-(p_y - p_{y'})^2 / (2 eps^2))
                  (eps = ``bandwidth``), quadrature weights w_{y'} = |Omega| / M = 1 / M; with
                  ``normalize`` each row is divided by sum_{y'} w_{y'} G(y, y') (non-local means).
attention   C     sum_{y'} a(y, y') u(y'), a(y, .) = softmax_{y'}(<Wq u(y), Wk u(y')> / sqrt(D)):
                  a kernel computed from the state itself, so K is nonlinear in u. Wq, Wk in
                  R^{D x C} (D = ``att_dim``, default C) are the operator's parameters, shared by
                  all pairs of a model.
==========  ====  ==============================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F_
from torch import Tensor

from .._checks import check_bool, check_choice, check_int, check_positive
from .base import Params

__all__ = ["OPERATORS", "Operator"]

OPERATORS = ("dense", "conv", "nonlocal", "attention")


@dataclass(frozen=True)
class Operator:
    """The within-layer operator of a DNL network; see the module docstring.

    kind: 'dense', 'conv', 'nonlocal' or 'attention'. width: m. positions: M (ignored by 'dense';
    must divide m). kernel_size: s (odd) of 'conv'. bandwidth: eps of 'nonlocal'. normalize: row-
    normalise the 'nonlocal' kernel. att_dim: D of 'attention' (default C).
    """

    kind: str = "dense"
    width: int = 16
    positions: int = 1
    kernel_size: int = 3
    bandwidth: float = 0.1
    normalize: bool = False
    att_dim: int | None = None

    def __post_init__(self) -> None:
        check_choice("operator", self.kind, OPERATORS)
        check_int("width", self.width, 1)
        check_int("positions", self.positions, 1)
        check_int("kernel_size", self.kernel_size, 1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd integer >= 1, got {self.kernel_size!r}")
        check_positive("bandwidth", self.bandwidth)
        check_bool("normalize", self.normalize)
        if self.att_dim is not None:
            check_int("att_dim", self.att_dim, 1)
        if self.kind != "dense" and self.width % self.positions:
            raise ValueError(f"positions must divide width for operator {self.kind!r}; "
                             f"got width={self.width}, positions={self.positions}")

    @property
    def M(self) -> int:
        """Number of positions (1 for 'dense')."""
        return 1 if self.kind == "dense" else self.positions

    @property
    def channels(self) -> int:
        """C = m / M."""
        return self.width // self.M

    @property
    def feature_dim(self) -> int:
        """F, the input size of a pair weight W_{k,j} (C x F)."""
        if self.kind == "conv":
            return self.channels * self.kernel_size
        return self.channels

    @property
    def D(self) -> int:
        return self.channels if self.att_dim is None else self.att_dim

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of the operator's own (pair-independent) parameters."""
        return ("Wq", "Wk") if self.kind == "attention" else ()

    def init(self, generator: torch.Generator) -> Params:
        """The operator's own parameters of one model, float64, no leading axis."""
        if self.kind != "attention":
            return {}
        C, D = self.channels, self.D
        return {n: torch.randn(D, C, generator=generator, dtype=torch.float64) / math.sqrt(C)
                for n in ("Wq", "Wk")}

    def gaussian(self, dtype: torch.dtype, device: torch.device | str) -> Tensor:
        """The quadrature-weighted kernel matrix w_{y'} G(y, y') (row-normalised with ``normalize``)."""
        M = self.M
        p = (torch.arange(M, dtype=dtype, device=device) + 0.5) / M
        G = torch.exp(-(p[:, None] - p[None, :]).square() / (2.0 * self.bandwidth**2)) / M
        if self.normalize:
            G = G / G.sum(1, keepdim=True)
        return G

    def features(self, params: Params, u: Tensor) -> Tensor:
        """Phi u for states ``u`` of shape (B, n, m): shape (B, n M, F)."""
        B, n, _ = u.shape
        M, C = self.M, self.channels
        if self.kind == "dense":
            return u
        v = u.reshape(B, n, M, C)
        if self.kind == "conv":
            r = self.kernel_size // 2
            padded = F_.pad(v, (0, 0, r, r))  # zero padding of the position axis
            patches = padded.unfold(2, self.kernel_size, 1)  # (B, n, M, C, s)
            return patches.reshape(B, n * M, C * self.kernel_size)
        if self.kind == "nonlocal":
            G = self.gaussian(u.dtype, u.device)
            return torch.einsum("yz,bnzc->bnyc", G, v).reshape(B, n * M, C)
        q = torch.einsum("bdc,bnyc->bnyd", params["Wq"], v)
        k = torch.einsum("bdc,bnyc->bnyd", params["Wk"], v)
        a = torch.softmax(torch.einsum("bnyd,bnzd->bnyz", q, k) / math.sqrt(self.D), dim=-1)
        return torch.einsum("bnyz,bnzc->bnyc", a, v).reshape(B, n * M, C)

    def apply(self, params: Params, W: Tensor, u: Tensor) -> Tensor:
        """K[u] = W Phi u for one pair weight ``W`` (B, C, F) and states ``u`` (B, n, m)."""
        B, n, m = u.shape
        out = torch.einsum("bof,bqf->bqo", W, self.features(params, u))
        return out.reshape(B, n, m)
