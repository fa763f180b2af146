"""KL-ball Rademacher bound for the mean-field ResNet (resdyn's own statement; docs/meanfield.md),
and its PLUG-IN ESTIMATE on trained finite networks (measure ``meanfield_kl_plugin``), which is not
a certificate.

Setting (the mean-field limit of ``resdyn.models.meanfield``): layer laws rho_0..rho_{L-1} on
theta = (u, w, b) in R^{2d+1}, predictor law nu on omega = (a, v, c) in R^{d+2}, reference law
gamma = N(0, I) for both,

    z_{l+1} = z_l + (alpha / L) int u sigma(w . z_l + b) d rho_l(theta),   z_0 = x,
    f(x) = beta int a sigma(v . z_L + c) d nu(omega),

with |sigma| <= s0 and sigma s1-Lipschitz (tanh: s0 = s1 = 1). For radii r1, r2 >= 0 let
F = {f : (1/L) sum_l KL(rho_l || gamma) <= r1, KL(nu || gamma) <= r2}. Then for any n points,

    Rad_n(F) <= beta s0 phi(r2) / sqrt(n) + alpha beta s0 s1 sqrt(2 r1) phi(r2),

    phi(r) = 2 sqrt(r)          for r <= 1/2,
    phi(r) = (2 r + 1) / sqrt 2 for r > 1/2.

The first term is the predictor acting on the raw inputs (the encoder of gamma is the identity,
since u is centred and independent of (w, b)); the second bounds, uniformly in x, how far a
KL-ball encoder can move the output. With probability >= 1 - delta over n i.i.d. samples, every
f in F (radii fixed before sampling) has 0-1 test error

    P(y f(x) <= 0) <= (1/n) sum_i min(1, max(0, 1 - y_i f(x_i))) + 2 Rad_n(F) + 3 sqrt(log(2/delta) / (2n)).

The derivation (Donsker-Varadhan, Hoeffding, Jensen) is in docs/meanfield.md.

Plug-in, not a certificate (docs/theory.md, 9): on a trained finite network the theorem's
hypotheses fail three ways. The particle measure has infinite KL, so r1, r2 are k-NN *estimates*
of the KL of smooth laws the clouds might be drawn from; the radii are read after training, whereas
the theorem needs them fixed before the sample; and a negative estimate (estimator noise) is
clipped to 0, which makes a complexity term exactly 0. The measure is therefore named
``meanfield_kl_plugin`` (values ``plugin``, ``plugin.*``, with ``plugin.r1_raw``, ``plugin.r2_raw``
the unclipped estimates and ``plugin.clipped`` the number of radii clipped) and reads as an
estimate everywhere.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._checks import check_positive

__all__ = ["MEASURES", "generalization_bound", "phi", "rademacher_bound"]

# Constants (s0 = sup |sigma|, s1 = Lipschitz constant) of the activations the bound allows.
ACTIVATION_CONSTANTS: dict[str, tuple[float, float]] = {"tanh": (1.0, 1.0)}


def phi(r: float) -> float:
    """phi(r) = 2 sqrt(r) for r <= 1/2, (2r + 1) / sqrt 2 beyond (continuous at 1/2)."""
    check_positive("r", r, allow_zero=True)
    return 2.0 * math.sqrt(r) if r <= 0.5 else (2.0 * r + 1.0) / math.sqrt(2.0)


def rademacher_bound(n: int, r1: float, r2: float, alpha: float, beta: float,
                     s0: float = 1.0, s1: float = 1.0) -> dict[str, float]:
    """The two terms of the bound on Rad_n(F) and their sum ('rademacher')."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    for name, v in (("r1", r1), ("r2", r2), ("alpha", alpha), ("s0", s0), ("s1", s1)):
        check_positive(name, v, allow_zero=True)
    check_positive("beta", beta)
    pred = beta * s0 * phi(r2) / math.sqrt(n)
    enc = alpha * beta * s0 * s1 * math.sqrt(2.0 * r1) * phi(r2)
    return {"predictor": pred, "encoder": enc, "rademacher": pred + enc}


def generalization_bound(n: int, train_ramp: float, r1: float, r2: float, alpha: float, beta: float,
                         delta: float = 0.05, s0: float = 1.0, s1: float = 1.0) -> dict[str, float]:
    """Bound on the 0-1 test error: train_ramp + 2 Rad_n(F) + 3 sqrt(log(2/delta) / (2n))."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    rad = rademacher_bound(n, r1, r2, alpha, beta, s0, s1)
    conf = 3.0 * math.sqrt(math.log(2.0 / delta) / (2.0 * n))
    return {**rad, "confidence": conf, "train_ramp": train_ramp,
            "bound": train_ramp + 2.0 * rad["rademacher"] + conf}


def _measure_kl_plugin(ctx: Any) -> dict[str, Tensor]:
    """The KL-ball formula with each trained model's k-NN KL estimates as radii (an estimate, not a bound).

    Options: delta (default 0.05), k (k-NN order). Values per model: plugin (the formula's value),
    plugin.rademacher, .predictor, .encoder, .confidence, .train_ramp, .r1, .r2 (clipped at 0),
    .r1_raw, .r2_raw (unclipped), .clipped (0, 1 or 2). Not a bound on the test error (module
    docstring).
    """
    from ..analysis.diagnostics import particle_kl

    model = ctx.model
    if getattr(model, "family", None) != "meanfield":
        raise ValueError(f"measure 'meanfield_kl_plugin' needs model family 'meanfield', got "
                         f"{getattr(model, 'family', None)!r}")
    if model.activation not in ACTIVATION_CONSTANTS:
        raise ValueError(f"measure 'meanfield_kl_plugin' needs a bounded Lipschitz activation; allowed: "
                         f"{', '.join(ACTIVATION_CONSTANTS)}, got {model.activation!r}")
    s0, s1 = ACTIVATION_CONSTANTS[model.activation]
    kl = particle_kl(model, ctx.params, ctx.options.get("k"), per_layer=False)
    delta = float(ctx.options.get("delta", 0.05))
    rows: dict[str, list[float]] = {}
    p0 = next(iter(ctx.params.values()))
    for e, idx in enumerate(ctx.train_indices):
        idx = torch.as_tensor(idx)
        x = ctx.data.prepare(ctx.data.x[idx], p0.dtype, p0.device).unsqueeze(0)
        with torch.no_grad():
            f = model.forward({k: v[e : e + 1] for k, v in ctx.params.items()}, x)[0, :, 0]
        y = (2 * ctx.data.y[idx] - 1).to(f)
        ramp = float((1 - y * f).clamp(0, 1).mean())
        r1_raw, r2_raw = float(kl["kl_enc_knn"][e]), float(kl["kl_pred_knn"][e])
        r1, r2 = max(r1_raw, 0.0), max(r2_raw, 0.0)
        b = generalization_bound(len(idx), ramp, r1, r2, model.alpha, model.beta, delta, s0, s1)
        b.update(r1=r1, r2=r2, r1_raw=r1_raw, r2_raw=r2_raw, clipped=float((r1_raw < 0) + (r2_raw < 0)))
        for key, v in b.items():
            rows.setdefault("plugin" if key == "bound" else f"plugin.{key}", []).append(v)
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in rows.items()}


MEASURES = {"meanfield_kl_plugin": _measure_kl_plugin}
