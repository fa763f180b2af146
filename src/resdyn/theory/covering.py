"""Comparator bounds from covering numbers (docs/theory.md, sections 4 and 5).

Both act on the discrete ResNet with the two-layer block, in augmented form: x~ = (x, 1),
z~ = (z, 1), A~ = [A c] (m x (d+1)), W~_l = [W_l b_l] (p x (m+1)), V_l (m x p), R~ = [R r]
(k x (m+1)); block l is z~ -> z~ + h (V_l act(W~_l z~), 0), Lipschitz in z~ with constant
lambda_l = 1 + h rho ||V_l||_2 ||W~_l||_2 (rho = Lip(act), act(0) = 0).

* Spectral (after Bartlett, Foster and Telgarsky 2017, residual form after He, Liu and Tao 2019):
  every matrix M_i gets a spectral level s_i and a (2,1) level b_i (sum of row 2-norms); with
  B_i the Frobenius norm of M_i's input over the sample and D_i the Lipschitz constant of the
  output in M_i's output,

      ln N(F|_S, eps, ||.||_2) <= Gamma^2 / eps^2,
      Gamma = (sum_i (2 ln(2 in_i out_i))^{1/3} (b_i B_i D_i)^{2/3})^{3/2},

  and Dudley's integral turns it into a Rademacher bound.
* Lipschitz in depth (after Marion 2023): Frobenius levels f_A, f_R, f_W = max_l ||W~_l||_F,
  f_V = max_l ||V_l||_F and depth-Lipschitz constants K_W = max_l ||W~_{l+1} - W~_l||_F / h, K_V;
  a piecewise-constant approximation with M pieces plus a parameter cover (Massart).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..models.base import Model, Params

__all__ = [
    "dudley",
    "marion_levels",
    "marion_rademacher",
    "matrix_list",
    "spectral_capacity",
    "spectral_levels",
    "spectral_supported",
]


def spectral_supported(model: Model) -> str | None:
    """None when the covering bounds apply to ``model``, else why not."""
    if getattr(model, "family", None) != "resnet":
        return f"model family {getattr(model, 'family', None)!r} (covering bounds need 'resnet')"
    if model.block != "two_layer":
        return f"block {model.block!r} (covering bounds need 'two_layer')"
    return None


def matrix_list(model: Model, params: Params) -> list[tuple[str, Tensor]]:
    """[('A', A~), ('W0', W~_0), ('V0', V_0), ..., ('R', R~)], each (E, out, in), float64."""
    p = {k: v.detach().to(torch.float64) for k, v in params.items()}
    out = [("A", torch.cat([p["A"], p["c"].unsqueeze(-1)], -1))]
    for l in range(model.depth):
        j = 0 if model.tied else l
        out.append((f"W{l}", torch.cat([p["W"][:, j], p["b"][:, j].unsqueeze(-1)], -1)))
        out.append((f"V{l}", p["V"][:, j]))
    out.append(("R", torch.cat([p["R"], p["r"].unsqueeze(-1)], -1)))
    return out


def spectral_levels(model: Model, params: Params) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
    """Spectral norms s (E, n), (2,1) norms b (E, n) = sum of row 2-norms, and (out, in) dims."""
    mats = matrix_list(model, params)
    s = torch.stack([torch.linalg.matrix_norm(M, ord=2) for _, M in mats], -1)
    b = torch.stack([M.norm(dim=-1).sum(-1) for _, M in mats], -1)
    return s, b, [(M.shape[1], M.shape[2]) for _, M in mats]


def spectral_capacity(
    model: Model, s: Tensor, b: Tensor, dims: list[tuple[int, int]], x_frob: Tensor
) -> tuple[Tensor, Tensor]:
    """Gamma (E,) and the class radius r = sup_F ||F(X)||_F (E,) at levels ``s``, ``b`` (E, n)
    for samples with ||X~||_F = ``x_frob`` (E,)."""
    L, h, rho = model.depth, model.step, float(model.act.lipschitz)
    sA, sR = s[:, 0], s[:, -1]
    sW = s[:, 1:-1:2]
    sV = s[:, 2:-1:2]
    lam = 1.0 + h * rho * sV * sW  # (E, L)
    F = [torch.sqrt(sA * sA + 1.0) * x_frob]  # ||Z~_l||_F bounds
    for l in range(L):
        F.append(F[-1] * lam[:, l])
    after = [torch.ones_like(sA) for _ in range(L + 1)]  # prod_{k >= l} lambda_k
    for l in range(L - 1, -1, -1):
        after[l] = after[l + 1] * lam[:, l]
    B, D = [x_frob], [sR * after[0]]
    for l in range(L):
        B += [F[l], rho * sW[:, l] * F[l]]
        D += [sR * after[l + 1] * h * rho * sV[:, l], sR * after[l + 1] * h]
    B.append(F[L])
    D.append(torch.ones_like(sA))
    terms = []
    for i, (o, n_in) in enumerate(dims):
        c = 2.0 * math.log(2.0 * o * n_in)
        terms.append(c ** (1 / 3) * (b[:, i] * B[i] * D[i]) ** (2 / 3))
    gamma = torch.stack(terms, -1).sum(-1) ** 1.5
    return gamma, sR * F[L]


def dudley(K: Tensor, radius: Tensor, S: int, extra: Tensor | float = 0.0) -> Tensor:
    """inf_alpha [4 alpha / sqrt S + (12 / S) int_alpha^radius (K / eps + extra) d eps], for a
    class with ln N(eps) <= (K / eps + extra)^2 (``extra`` = sqrt(ln k) for k coordinates), capped
    by the trivial radius / sqrt(S). The minimiser alpha = min(3 K / sqrt S, radius) is used."""
    K = torch.as_tensor(K, dtype=torch.float64)
    radius = torch.as_tensor(radius, dtype=torch.float64)
    alpha = torch.minimum(3.0 * K / math.sqrt(S), radius).clamp_min(1e-300)
    val = 4.0 * alpha / math.sqrt(S) + 12.0 / S * (K * torch.log(radius / alpha)
                                                    + extra * (radius - alpha))
    return torch.minimum(val, radius / math.sqrt(S))


def marion_levels(model: Model, params: Params) -> dict[str, Tensor]:
    """Frobenius levels f_A, f_R, f_W, f_V and depth-Lipschitz constants K_W, K_V, each (E,)."""
    mats = matrix_list(model, params)
    fro = {n: M.flatten(1).norm(dim=-1) for n, M in mats}
    L, h = model.depth, model.step
    W = [mats[1 + 2 * l][1] for l in range(L)]
    V = [mats[2 + 2 * l][1] for l in range(L)]
    zero = torch.zeros_like(fro["A"])
    KW = torch.stack([(W[l + 1] - W[l]).flatten(1).norm(dim=-1) for l in range(L - 1)], -1).amax(-1) / h \
        if L > 1 else zero
    KV = torch.stack([(V[l + 1] - V[l]).flatten(1).norm(dim=-1) for l in range(L - 1)], -1).amax(-1) / h \
        if L > 1 else zero
    return {
        "f_A": fro["A"],
        "f_R": fro["R"],
        "f_W": torch.stack([fro[f"W{l}"] for l in range(L)], -1).amax(-1),
        "f_V": torch.stack([fro[f"V{l}"] for l in range(L)], -1).amax(-1),
        "K_W": KW,
        "K_V": KV,
    }


def marion_rademacher(
    model: Model, levels: dict[str, Tensor], x_max: Tensor, S: int, k: int = 1
) -> tuple[Tensor, Tensor]:
    """resdyn's Lipschitz-in-depth bound (docs/theory.md, Thm 5.1) on Rad_S of the coordinate
    class Pi_1(F) at ``levels`` (see :func:`marion_levels`) for samples with max ||x~_i||_2 =
    ``x_max``; returns (bound, chosen number of pieces M), each (E,).

        Rad <= Delta_M + eps + B_f sqrt(2 ln(k N_M(eps)) / S),

    minimised over M in 1..L and eps in B_f / sqrt(S) * {1/8, ..., 8}.
    """
    L, h, T, rho = model.depth, model.step, model.horizon, float(model.act.lipschitz)
    fA, fR, fW, fV = levels["f_A"], levels["f_R"], levels["f_W"], levels["f_V"]
    KW, KV = levels["K_W"], levels["K_V"]
    m, p = model.width, model.p
    d = model.in_dim
    e = torch.exp(T * rho * fV * fW)
    Z = torch.sqrt(fA * fA + 1.0) * x_max * e
    Bf = fR * Z
    DA, DR = m * (d + 1), model.out_dim * (m + 1)
    DW, DV = p * (m + 1), m * p
    best = torch.full_like(fA, math.inf)
    bestM = torch.zeros_like(fA)
    for M in range(1, L + 1):
        per = math.ceil(L / M)
        pieces = math.ceil(L / per)
        shift = h * (per - 1)
        delta = fR * e * T * rho * Z * (fV * KW + fW * KV) * shift
        for f in (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0):
            eps = f * Bf / math.sqrt(S)
            etaA = eps / 3 / (fR * e * x_max)
            etaB = eps / 3 / (fR * e * T * rho * Z * (fV + fW)).clamp_min(1e-300)
            etaR = eps / 3 / Z
            lnN = (DA * torch.log1p(2 * fA / etaA) + pieces * (DW * torch.log1p(2 * fW / etaB)
                   + DV * torch.log1p(2 * fV / etaB)) + DR * torch.log1p(2 * fR / etaR))
            val = delta + eps + Bf * torch.sqrt(2 * (lnN + math.log(k)) / S)
            better = val < best
            best = torch.where(better, val, best)
            bestM = torch.where(better, torch.full_like(bestM, float(pieces)), bestM)
    return torch.minimum(best, Bf), bestM
