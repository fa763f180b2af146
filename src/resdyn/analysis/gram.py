"""Gram matrices of per-sample parameter gradients (the mean-field G1 and G2; docs/meanfield.md).

For one model with output f(x; P) and parameter tensors P_name, the per-sample gradients are
J_name[i] = d f(x_i) / d P_name (computed with ``torch.func.jacrev``). A group g of parameters
with scales s_name has the Gram matrix

    G_g[i, j] = sum_{name in g} s_name < J_name[i], J_name[j] >.

Normalisation: under the gradient flow dP_name/dt = -s_name dL/dP_name of the squared loss
L = (1/2n) sum_i (f(x_i) - y_i)^2, the residuals e_i = f(x_i) - y_i obey

    de/dt = -(1/n) (sum_g G_g) e,     dL/dt = -(1/n^2) e^T G e <= -(2/n) lambda_min(G) L,

so L(t) <= exp(-2 lambda_min(G) t / n) L(0). For the mean-field ResNet (s = L M on the encoder,
K on the predictor) G1 and G2 are the finite-particle versions of the mean-field Gram matrices:
G2[i, j] = (1/K) sum_k grad_omega[beta h(z_L(x_i); omega_k)] . grad_omega[beta h(z_L(x_j); omega_k)],
whose limit is the integral over nu; they stay O(1) as M, K grow. G2 has rank at most K q
(q = d + 2), so lambda_min(G2) = 0 exactly once n > K q.

The scales are the documented normalisation, **not** the learning-rate setting: s = L M (M when
tied) on u, w, b and s = K on a, v, c (:func:`gram_scales`), whatever ``mean_field_lr`` says, so a
run trained with plain rates (``mean_field_lr = false``) records the same G1, G2 as one with the
mean-field rates. Other models get s = 1. Callers may pass ``scales`` explicitly.

Everything is computed in float64.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.func import jacrev

from ..models.base import Model, Params

__all__ = ["gram_groups", "gram_matrices", "gram_scales", "lambda_min", "per_sample_gradients"]


def gram_scales(model: Model) -> dict[str, float]:
    """The documented normalisation s_name of docs/meanfield.md: L M (M when tied) for the encoder
    particles u, w, b and K for the predictor particles a, v, c of a mean-field model; {} (s = 1)
    for any other family. Independent of the learning-rate setting."""
    if getattr(model, "family", None) != "meanfield":
        return {}
    enc = float(model.width * (1 if model.tied else model.depth))
    pred = float(model.predictor_width)
    return {**dict.fromkeys(("u", "w", "b"), enc), **dict.fromkeys(("a", "v", "c"), pred)}


def gram_groups(model: Model, params: Params) -> dict[str, tuple[str, ...]]:
    """The model's groups (``model.gram_groups()``), or one group 'G' of every parameter."""
    groups = getattr(model, "gram_groups", None)
    if groups is not None:
        return dict(groups())
    return {"G": tuple(params)}


def per_sample_gradients(
    model: Model, params: Params, x: Tensor, names: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """J[name] of shape (E, n, *shape): d f_e(x_i) / d params[name][e] for every model e.

    params: leading model axis E. x: (n, d) shared inputs or (E, n, d) per-model inputs. The
    output must be scalar (``out_dim = 1``). Computed in float64.
    """
    if model.out_dim != 1:
        raise ValueError(f"per_sample_gradients needs a model with out_dim = 1, got {model.out_dim}")
    names = tuple(params) if names is None else tuple(names)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(f"names {unknown} are not parameters; allowed: {', '.join(params)}")
    P = {k: v.detach().to(torch.float64) for k, v in params.items()}
    E = next(iter(P.values())).shape[0]
    x = x.to(torch.float64)
    if x.dim() == 2:
        x = x.unsqueeze(0).expand(E, *x.shape)
    if x.dim() != 3 or x.shape[0] != E:
        raise ValueError(f"x must have shape (n, d) or (E={E}, n, d), got {tuple(x.shape)}")
    out: dict[str, list[Tensor]] = {n: [] for n in names}
    for e in range(E):
        fixed = {k: v[e : e + 1] for k, v in P.items() if k not in names}
        xe = x[e : e + 1]

        def f(sub: dict[str, Tensor], fixed: dict[str, Tensor] = fixed, xe: Tensor = xe) -> Tensor:
            return model.forward({**fixed, **sub}, xe)[0, :, 0]

        jac = jacrev(f)({n: P[n][e : e + 1] for n in names})
        for n in names:
            out[n].append(jac[n][:, 0])
    return {n: torch.stack(v) for n, v in out.items()}


def gram_matrices(
    model: Model,
    params: Params,
    x: Tensor,
    groups: Mapping[str, Sequence[str]] | None = None,
    scales: Mapping[str, float] | None = None,
) -> dict[str, Tensor]:
    """G_g of shape (E, n, n) for every group g, and their sum under the key 'total'.

    groups: name -> parameter names (default :func:`gram_groups`). scales: s_name (default
    :func:`gram_scales`, the documented normalisation; a name missing from it has s = 1).
    """
    groups = gram_groups(model, params) if groups is None else dict(groups)
    if scales is None:
        scales = gram_scales(model)
    names = sorted({n for g in groups.values() for n in g})
    J = per_sample_gradients(model, params, x, names)
    out: dict[str, Tensor] = {}
    for g, members in groups.items():
        G = None
        for n in members:
            Jn = J[n].flatten(2)
            term = float(scales.get(n, 1.0)) * Jn @ Jn.transpose(1, 2)
            G = term if G is None else G + term
        out[g] = G
    out["total"] = sum(out[g] for g in groups)
    return out


def lambda_min(G: Tensor) -> Tensor:
    """Smallest eigenvalue of each symmetric matrix in G (..., n, n), float64."""
    G = G.to(torch.float64)
    return torch.linalg.eigvalsh(0.5 * (G + G.transpose(-1, -2)))[..., 0]
