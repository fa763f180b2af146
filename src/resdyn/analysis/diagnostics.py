"""Mean-field diagnostics (docs/meanfield.md): pure functions of a model and its parameters.

``resdyn.sweeps.measures`` records them along training (trackers) and after it (measures).

Every value is per model, a float64 tensor of shape (E,):

* ``gram``: lambda_min of G1 (encoder), G2 (predictor) and G1 + G2 (``resdyn.analysis.gram``) on
  the first ``max_points`` (option, default 128) training points of each model. By Cauchy
  interlacing, lambda_min on a subset is >= lambda_min on the whole sample.
* ``kl``: KL of the particle distribution from N(0, I): encoder per layer (``kl_enc_knn.l<j>``,
  ``kl_enc_gauss.l<j>``), averaged over layers (``kl_enc_knn``, ``kl_enc_gauss``; the KL of the
  joint law of (theta, s) with the uniform depth marginal), and predictor (``kl_pred_knn``,
  ``kl_pred_gauss``); see ``resdyn.analysis.kl``. Option ``k``: the k-NN order.
* ``displacement``: per-particle distances |theta(t) - theta(0)|: mean and max, and
  ``w2_enc``/``w2_pred`` = sqrt(mean |theta(t) - theta(0)|^2), which bounds W2(rho_t, rho_0) from
  above (the identity coupling); encoder values average over layers.
* ``linear_rate``: least-squares slope of log loss against step over the losses so far (option
  ``start``: the first step of the window, default 0): loss ~ C exp(-rate * step).

Particle diagnostics need a model with ``encoder_particles``/``predictor_particles`` (the
mean-field family); ``gram`` works for any scalar-output model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..models.base import Model, Params
from .gram import gram_matrices, lambda_min
from .kl import kl_gaussian_fit, kl_knn

__all__ = ["displacement", "fit_linear_rate", "gram_lambda_min",
           "particle_kl"]


def _need_particles(model: Model) -> None:
    if not hasattr(model, "encoder_particles"):
        raise ValueError(f"particle diagnostics need the mean-field family ('meanfield'); "
                         f"got family {model.family!r}")


def gram_lambda_min(model: Model, params: Params, xs: list[Tensor]) -> dict[str, Tensor]:
    """lambda_min of every Gram group and of their sum ('total') for model e on inputs xs[e]."""
    out: dict[str, list[float]] = {}
    for e, x in enumerate(xs):
        sub = {k: v[e : e + 1] for k, v in params.items()}
        G = gram_matrices(model, sub, x)
        for g, mat in G.items():
            out.setdefault(f"lambda_min_{g}", []).append(float(lambda_min(mat)[0]))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}


def particle_kl(model: Model, params: Params, k: int | None = None,
                per_layer: bool = True) -> dict[str, Tensor]:
    """KL of the encoder (per layer and averaged) and predictor particles from N(0, I)."""
    _need_particles(model)
    enc = model.encoder_particles(params).detach().to(torch.float64).cpu()  # (E, L', M, p)
    pred = model.predictor_particles(params).detach().to(torch.float64).cpu()  # (E, K, q)
    out: dict[str, Tensor] = {}
    for name, fn in (("knn", lambda s: kl_knn(s, k)), ("gauss", kl_gaussian_fit)):
        layers = fn(enc)  # (E, L')
        out[f"kl_enc_{name}"] = layers.mean(1)
        out[f"kl_pred_{name}"] = fn(pred)
        if per_layer:
            for j in range(layers.shape[1]):
                out[f"kl_enc_{name}.l{j}"] = layers[:, j]
    return out


def displacement(model: Model, params: Params, params0: Params) -> dict[str, Tensor]:
    """Distances moved by the particles since ``params0`` (see module docstring)."""
    _need_particles(model)
    out: dict[str, Tensor] = {}
    for part, get in (("enc", model.encoder_particles), ("pred", model.predictor_particles)):
        d = (get(params).detach().to(torch.float64) - get(params0).detach().to(torch.float64))
        dist = d.norm(dim=-1).cpu().flatten(1)  # (E, particles)
        out[f"move_mean_{part}"] = dist.mean(1)
        out[f"move_max_{part}"] = dist.max(1).values
        out[f"w2_{part}"] = dist.square().mean(1).sqrt()
    return out


def fit_linear_rate(losses: Tensor | np.ndarray, start: int = 0) -> Tensor:
    """Per model, the rate c of loss ~ C exp(-c t) fitted by least squares of log loss on t.

    losses: (T, E) or (T,) losses at steps t = 0..T-1. Steps before ``start`` and non-finite or
    non-positive losses are left out; fewer than 2 usable steps give NaN.
    """
    arr = losses.detach().cpu().numpy() if isinstance(losses, Tensor) else np.asarray(losses)
    arr = arr.astype(np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    t = np.arange(arr.shape[0], dtype=np.float64)
    rates = []
    for e in range(arr.shape[1]):
        y = arr[start:, e]
        tt = t[start:]
        ok = np.isfinite(y) & (y > 0)
        if ok.sum() < 2:
            rates.append(np.nan)
            continue
        slope = np.polyfit(tt[ok], np.log(y[ok]), 1)[0]
        rates.append(-slope)
    return torch.tensor(rates, dtype=torch.float64)
