"""Every bound of docs/theory.md evaluated on one trained model and its own training sample.

:func:`bound_terms` returns a flat dict of floats: each complexity bound with its terms, the
dead-zone term, and the assembled test-error bound (section 6):

    test error <= ramp_gamma + (2 / gamma) c_k Rad_S(Pi_1 F) + 3 sqrt(ln(2 / delta') / (2 S)),

c_k = 2 k for k >= 2 classes (Maurer's vector contraction), c_k = 1 for one output; delta' is
delta divided among the complexity families and the grid of levels and margins (a union bound),
so that gamma and the norm levels may be chosen after training.

Options (``BoundOptions``; keys of a spec's measure table): delta = 0.05; kappa = 4.0 (path-norm
weight, > 2); gamma_grid: gamma_j = 2^{j/4}, j = -40..20 (61 margins); level_grid: 2^i,
i = -20..40 (61 levels per norm); families = ('path_norm', 'spectral', 'marion'); substeps = 8
(piecewise-linear flow majorant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from ..models.base import Model, Params
from .covering import (
    dudley,
    marion_levels,
    marion_rademacher,
    spectral_capacity,
    spectral_levels,
    spectral_supported,
)
from .pathnorm import (
    DEFAULT_KAPPA,
    flow_path_norm,
    path_norm_rademacher,
    path_norm_state,
    relu_expansion,
    supported,
)

__all__ = ["FAMILIES", "BoundOptions", "bound_terms", "margins", "ramp_loss"]

FAMILIES = ("path_norm", "spectral", "marion")


@dataclass(frozen=True)
class BoundOptions:
    """See the module docstring for meanings and defaults."""

    delta: float = 0.05
    kappa: float = DEFAULT_KAPPA
    gamma_exponents: tuple[int, int] = (-40, 20)
    gamma_step: float = 0.25
    level_exponents: tuple[int, int] = (-20, 40)
    families: tuple[str, ...] = FAMILIES
    substeps: int = 8

    def __post_init__(self) -> None:
        if not (isinstance(self.delta, float | int) and 0 < self.delta < 1):
            raise ValueError(f"delta must be a number in (0, 1), got {self.delta!r}")
        if not (isinstance(self.kappa, float | int) and math.isfinite(self.kappa) and self.kappa > 2):
            raise ValueError(f"kappa must be a finite number > 2, got {self.kappa!r}")
        for name in ("gamma_exponents", "level_exponents"):
            lo, hi = getattr(self, name)
            if not (isinstance(lo, int) and isinstance(hi, int) and lo <= hi):
                raise ValueError(f"{name} must be two integers lo <= hi, got {getattr(self, name)!r}")
        if not self.gamma_step > 0:
            raise ValueError(f"gamma_step must be > 0, got {self.gamma_step!r}")
        bad = [f for f in self.families if f not in FAMILIES]
        if bad or not self.families:
            raise ValueError(f"families must be a non-empty subset of {FAMILIES}, "
                             f"got {self.families!r}")
        if not (isinstance(self.substeps, int) and self.substeps >= 1):
            raise ValueError(f"substeps must be an integer >= 1, got {self.substeps!r}")

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> BoundOptions:
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown bound option(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(sorted(known))}")
        for k in ("gamma_exponents", "level_exponents", "families"):
            if k in options:
                options[k] = tuple(options[k])
        return cls(**options)

    @property
    def gammas(self) -> Tensor:
        lo, hi = self.gamma_exponents
        return 2.0 ** (torch.arange(lo, hi + 1, dtype=torch.float64) * self.gamma_step)

    @property
    def n_levels(self) -> int:
        lo, hi = self.level_exponents
        return hi - lo + 1


def _round_up(x: Tensor, opts: BoundOptions) -> Tensor:
    """The smallest grid level 2^i >= x (i in level_exponents); inf beyond the grid."""
    lo, hi = opts.level_exponents
    i = torch.ceil(torch.log2(x.clamp_min(2.0 ** lo))).clamp_min(lo)
    return torch.where(i > hi, torch.full_like(x, math.inf), 2.0 ** i)


def margins(out: Tensor, y: Tensor) -> Tensor:
    """rho = f_y - max_{y' != y} f_{y'} for k >= 2 outputs; (2y - 1) f for one output."""
    if out.shape[-1] == 1:
        return (2 * y - 1).to(out.dtype) * out[..., 0]
    fy = out.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    other = out.scatter(-1, y.unsqueeze(-1), -math.inf).amax(-1)
    return fy - other


def ramp_loss(rho: Tensor, gamma: Tensor) -> Tensor:
    """Mean of Phi_gamma(rho) = clamp(1 - rho / gamma, 0, 1) over samples, per gamma: (G,)."""
    return (1.0 - rho[None, :] / gamma[:, None]).clamp(0.0, 1.0).mean(-1)


def bound_terms(
    model: Model,
    params: Params,
    x: Tensor,
    y: Tensor,
    options: dict[str, Any] | BoundOptions | None = None,
) -> dict[str, float]:
    """All bounds for ONE model (params with a leading model axis of size 1) on its sample
    ``x`` (S, d) (prepared, any dtype) with labels ``y`` (S,). NaN marks a bound that does not
    apply to the model (see ``pathnorm.supported`` and ``covering.spectral_supported``)."""
    opts = options if isinstance(options, BoundOptions) else BoundOptions.from_dict(options)
    E = next(iter(params.values())).shape[0]
    if E != 1:
        raise ValueError(f"bound_terms evaluates one model at a time; params have a model axis of {E}")
    inputs = x.detach().to(torch.float64)  # as the model takes them (images stay images)
    x = inputs.flatten(1)
    S = x.shape[0]
    if S < 1:
        raise ValueError("bound_terms needs a non-empty sample")
    sq = (x * x).sum(-1) + 1.0  # ||x~_i||^2
    x_frob = sq.sum().sqrt()
    k = int(model.out_dim)
    ck = 2.0 * k if k >= 2 else 1.0
    nan = float("nan")
    out: dict[str, float] = {"sample_size": float(S), "x_rms": float((sq.mean()).sqrt())}
    with torch.no_grad():
        f = model.forward({n: v.detach().to(torch.float64) for n, v in params.items()},
                          inputs.unsqueeze(0))[0]
    rho = margins(f, y.to(f.device))
    gam = opts.gammas
    ramp = ramp_loss(rho, gam)
    out["train_error"] = float((rho <= 0).to(torch.float64).mean())
    n_fam = len(opts.families)
    ln_gamma = math.log(len(gam))
    ln_level = math.log(opts.n_levels)
    te: dict[str, tuple[float, float, float, float, float]] = {}

    # --- path norm (discrete) and flow (continuous-time) -------------------------------------
    reason = supported(model)
    pn_keys = ("path_norm_bound", "path_norm_bound.path_norm", "path_norm_bound.factor",
               "path_norm_bound.depth0", "flow_bound", "flow_bound.path_norm", "dead_zone",
               "dead_zone.dead_fraction", "dead_zone.mu", "dead_zone.band", "dead_zone.refined",
               "path_norm_bound.log_path_norm", "flow_bound.log_path_norm", "flow_bound.log",
               "flow_bound.covered")
    if reason is not None:
        out.update({key: nan for key in pn_keys})
        if getattr(getattr(model, "act", None), "dead_zone", 0) is None:
            # no dead zone: the refinement is zero whatever the complexity it would refine
            out.update({"dead_zone": 0.0, "dead_zone.dead_fraction": 0.0, "dead_zone.band": 0.0})
    else:
        kappa = float(opts.kappa)
        c = kappa / (kappa - 2.0)
        flow = flow_path_norm(model, params, kappa, opts.substeps)
        # a continuous-time model's class is the flow class
        st = path_norm_state(model, params, kappa) if model.family == "resnet" else flow
        P = st.P[0]
        band = relu_expansion(model.act).band
        mu = st.mu[0]
        out["path_norm_bound"] = float(path_norm_rademacher(P, sq, kappa))
        out["path_norm_bound.path_norm"] = float(P)
        out["path_norm_bound.factor"] = c
        out["path_norm_bound.depth0"] = float(path_norm_rademacher(P, sq, kappa, residual=False))
        out["path_norm_bound.log_path_norm"] = float(st.log_P[0])
        # log of the flow bound: log P + log of the bound at P = 1 (finite when P overflows)
        out["flow_bound.log_path_norm"] = float(flow.log_P[0])
        out["flow_bound.log"] = float(flow.log_P[0] + torch.log(path_norm_rademacher(1.0, sq, kappa)))
        # Theorem 2.2 covers the exact flow and Euler steps (docs/theory.md, 10); a model solved
        # with another solver computes a function the certificate does not cover.
        covered = model.family == "resnet" or getattr(model, "method", None) == "euler"
        out["flow_bound.covered"] = 1.0 if covered else 0.0
        out["flow_bound"] = float(path_norm_rademacher(flow.P[0], sq, kappa)) if covered else nan
        out["flow_bound.path_norm"] = float(flow.P[0])
        # The dead-zone certificate needs mu bounding every unit's level. The flow's mu is taken at
        # the start of each ODE piece, where N(t) (non-decreasing) is smallest: not a bound there,
        # so continuous-time models get no dead-zone refinement.
        certified = band > 0 and model.family == "resnet"
        active = (mu * sq.sqrt() > band) if certified else torch.ones_like(sq, dtype=torch.bool)
        refined = float(path_norm_rademacher(P, sq, kappa, active=active))
        out["dead_zone"] = max(out["path_norm_bound"] - refined, 0.0)
        out["dead_zone.dead_fraction"] = float(1.0 - active.to(torch.float64).mean())
        out["dead_zone.mu"] = float(mu)
        out["dead_zone.band"] = band
        out["dead_zone.refined"] = out["path_norm_bound"] - out["dead_zone"]
        # test-error bound at grid levels (Q, and mu* when the activation has a dead band)
        Qg = _round_up(st.P, opts)[0]
        if certified:
            mug = _round_up(st.mu, opts)[0]
            active_g = mug * sq.sqrt() > band
            ln_grid = 2 * ln_level + ln_gamma
        else:
            active_g = torch.ones_like(sq, dtype=torch.bool)
            ln_grid = ln_level + ln_gamma
        rad = path_norm_rademacher(Qg, sq, kappa, active=active_g)
        if not covered:
            # the path-norm class of a continuous-time model is the flow class: not this solver's
            for key in ("path_norm_bound", "path_norm_bound.depth0", "dead_zone", "dead_zone.refined"):
                out[key] = nan
        else:
            te["path_norm"] = _assemble(ramp, gam, 2.0 * ck / gam * rad, ln_grid,
                                        opts.delta / n_fam, S)

    # --- spectral (BFT, residual form) and Lipschitz-in-depth (Marion) -------------------------
    reason = spectral_supported(model)
    if reason is not None:
        out.update({key: nan for key in ("spectral_bound", "spectral_bound.capacity",
                                         "spectral_bound.radius", "marion_bound",
                                         "marion_bound.pieces", "marion_bound.K_W",
                                         "marion_bound.K_V")})
    else:
        s, b, dims = spectral_levels(model, params)
        Gam, radius = spectral_capacity(model, s, b, dims, x_frob.reshape(1))
        out["spectral_bound"] = float(dudley(Gam, radius, S, math.sqrt(math.log(k)))[0])
        out["spectral_bound.capacity"] = float(Gam[0])
        out["spectral_bound.radius"] = float(radius[0])
        sg, bg = _round_up(s, opts), _round_up(b, opts)
        Gg, _ = spectral_capacity(model, sg, bg, dims, x_frob.reshape(1))
        cl = math.sqrt(2.0) if k >= 2 else 1.0
        rad_loss = dudley(cl * Gg[0] / gam, torch.full_like(gam, math.sqrt(S)), S)
        n_mats = s.shape[1]
        te["spectral"] = _assemble(ramp, gam, 2.0 * rad_loss, 2 * n_mats * ln_level + ln_gamma,
                                   opts.delta / n_fam, S)
        lv = marion_levels(model, params)
        xmax = sq.max().sqrt().reshape(1)
        mr, pieces = marion_rademacher(model, lv, xmax, S, k)
        out["marion_bound"] = float(mr[0])
        out["marion_bound.pieces"] = float(pieces[0])
        out["marion_bound.K_W"] = float(lv["K_W"][0])
        out["marion_bound.K_V"] = float(lv["K_V"][0])
        lvg = {key: _round_up(v, opts) for key, v in lv.items()}
        mrg, _ = marion_rademacher(model, lvg, xmax, S, k)
        te["marion"] = _assemble(ramp, gam, 2.0 * ck / gam * mrg[0], 6 * ln_level + ln_gamma,
                                 opts.delta / n_fam, S)

    # --- assembly -----------------------------------------------------------------------------
    best_name, best = None, (math.inf, nan, nan, nan, nan)
    for name in opts.families:
        if name in te:
            out[f"test_error_bound.{name}"] = te[name][0]
            if te[name][0] < best[0]:
                best_name, best = name, te[name]
        else:
            out[f"test_error_bound.{name}"] = nan
    value, margin_loss, complexity, confidence, gamma = best
    out["test_error_bound"] = value if best_name is not None else nan
    out["test_error_bound.margin_loss"] = margin_loss
    out["test_error_bound.complexity"] = complexity
    out["test_error_bound.confidence"] = confidence
    out["test_error_bound.gamma"] = gamma
    out["test_error_bound.family"] = float(FAMILIES.index(best_name)) if best_name else nan
    return out


def _assemble(
    ramp: Tensor, gam: Tensor, complexity: Tensor, ln_grid: float, delta: float, S: int
) -> tuple[float, float, float, float, float]:
    """min over gamma of ramp + complexity + 3 sqrt((ln(2/delta) + ln_grid) / (2S)): returns
    (value, margin_loss, complexity, confidence, gamma) at the minimising gamma."""
    conf = 3.0 * math.sqrt((math.log(2.0 / delta) + ln_grid) / (2.0 * S))
    total = ramp + complexity + conf
    total = torch.where(torch.isfinite(total), total, torch.full_like(total, math.inf))
    j = int(torch.argmin(total))
    return float(total[j]), float(ramp[j]), float(complexity[j]), conf, float(gam[j])
