"""Empirical Rademacher complexity: exact for norm-ball linear classes, Monte-Carlo lower
estimates for the network classes of docs/theory.md (section 7).

Rad_S(F) = E_eps sup_{f in F} (1/S) sum_i eps_i f(x_i), eps uniform on {-1, +1}^S.

* :func:`exact_linear_rademacher`: F = {x -> v . x~ : ||v||_2 <= Q}, where the supremum is
  Q ||sum_i eps_i x~_i||_2 in closed form, averaged over all 2^S sign vectors (S <= 20).
* ``resdyn.training.rademacher.mc_rademacher`` (it trains, so it lives in the training layer and
  uses the members defined here): n_signs sign vectors drawn from a seed; for each, the supremum is
  approximated from below by training ``restarts`` members of the class (scalar-output ResNets of
  the given shape, all at once on the model axis) to maximise (1/S) sum_i eps_i f(x_i), each kept
  inside the class by a map ``member`` (rescaling the readout to path norm Q, or scaling every
  matrix to its levels). Every value is attained by a member, so each is <= the supremum, and
  the mean is a lower estimate of Rad_S(F) with its standard error.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.base import Params
from ..models.resnet import ResNet
from .pathnorm import DEFAULT_KAPPA, path_norm_state

__all__ = [
    "MCResult",
    "exact_linear_rademacher",
    "frobenius_member",
    "path_norm_member",
    "spectral_member",
]


def exact_linear_rademacher(x: Tensor, Q: float = 1.0) -> float:
    """Exact Rad_S of {x -> v . (x, 1) : ||v||_2 <= Q} on the sample ``x`` (S, d), S <= 20."""
    x = x.to(torch.float64).flatten(1)
    S = x.shape[0]
    if not 1 <= S <= 20:
        raise ValueError(f"exact enumeration needs 1 <= S <= 20 samples, got {S}")
    xt = torch.cat([x, torch.ones(S, 1, dtype=torch.float64)], -1)
    signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=S)), dtype=torch.float64)
    return float(Q * (signs @ xt).norm(dim=-1).mean() / S)


@dataclass(frozen=True)
class MCResult:
    """mean: the lower estimate of Rad_S; stderr: its standard error over sign vectors;
    values: the per-sign-vector estimates of sup (1/S) sum eps_i f(x_i)."""

    mean: float
    stderr: float
    values: Tensor


Member = Callable[[Params], Params]


def path_norm_member(model: ResNet, Q: float, kappa: float = DEFAULT_KAPPA) -> Member:
    """Rescale the readout (R, r) by Q / P(theta): the result has path norm exactly Q."""

    def member(p: Params) -> Params:
        P = path_norm_state(model, p, kappa, grad=True).P
        scale = (Q / P).to(p["R"].dtype)
        return {**p, "R": p["R"] * scale[:, None, None], "r": p["r"] * scale[:, None]}

    return member


def _scaled(M: Tensor, factor: Tensor) -> Tensor:
    return M * factor.reshape(-1, *([1] * (M.dim() - 1)))


def spectral_member(model: ResNet, s: Tensor, b: Tensor) -> Member:
    """Scale every matrix M_i (of :func:`covering.matrix_list`) by min(1, s_i / ||M_i||_2,
    b_i / ||M_i^T||_{2,1}): inside the spectral class at levels s, b (n,)."""
    def factor(i: int, M: Tensor) -> Tensor:
        spec = s[i] / torch.linalg.matrix_norm(M, ord=2).clamp_min(1e-30)
        two_one = b[i] / M.norm(dim=-1).sum(-1).clamp_min(1e-30)
        return torch.minimum(torch.minimum(spec, two_one), torch.ones_like(spec))

    return _matrix_member(model, factor)


def frobenius_member(model: ResNet, levels: dict[str, float]) -> Member:
    """Scale every matrix to Frobenius level f_A, f_W, f_V, f_R (tied models: K_W = K_V = 0), i.e.
    inside the Lipschitz-in-depth class at any K_W, K_V >= 0."""
    if not model.tied:
        raise ValueError("frobenius_member needs a tied model (its depth-Lipschitz constants are 0)")
    names = ["A"] + [n for l in range(model.depth) for n in (f"W{l}", f"V{l}")] + ["R"]
    lv = ([levels["f_A"]] + [levels["f_W"] if n[0] == "W" else levels["f_V"] for n in names[1:-1]]
          + [levels["f_R"]])

    def factor(i: int, M: Tensor) -> Tensor:
        return torch.clamp(lv[i] / M.flatten(1).norm(dim=-1).clamp_min(1e-30), max=1.0)

    return _matrix_member(model, factor)


def _matrix_member(model: ResNet, factor: Callable[[int, Tensor], Tensor]) -> Member:
    if model.block != "two_layer":
        raise ValueError(f"matrix members need block 'two_layer', got {model.block!r}")

    def member(p: Params) -> Params:
        mats = _mats(model, p)
        scaled = [_scaled(M, factor(i, M)) for i, M in enumerate(mats)]
        out = {"A": scaled[0][..., :-1], "c": scaled[0][..., -1],
               "R": scaled[-1][..., :-1], "r": scaled[-1][..., -1]}
        Ws = [scaled[1 + 2 * l] for l in range(model.depth)]
        Vs = [scaled[2 + 2 * l] for l in range(model.depth)]
        out["W"] = torch.stack([W[..., :-1] for W in Ws], 1)
        out["b"] = torch.stack([W[..., -1] for W in Ws], 1)
        out["V"] = torch.stack(Vs, 1)
        return out

    return member


def _mats(model: ResNet, p: Params) -> list[Tensor]:
    """As covering.matrix_list but differentiable and with one entry per stored layer."""
    n = p["W"].shape[1]
    out = [torch.cat([p["A"], p["c"].unsqueeze(-1)], -1)]
    for l in range(n):
        out.append(torch.cat([p["W"][:, l], p["b"][:, l].unsqueeze(-1)], -1))
        out.append(p["V"][:, l])
    out.append(torch.cat([p["R"], p["r"].unsqueeze(-1)], -1))
    return out
