"""Weighted path norms of residual networks and the depth-uniform Rademacher bound built on them.

Notation (docs/theory.md, section 2): input x in R^d, x~ = (x, 1); z_0 = A x + c;
z_{l+1} = z_l + h F_l(z_l), h = T / L; readout f(x) = R z_L + r (k outputs). Two-layer block
F_l(z) = V_l act(W_l z + b_l); one-layer block F_l(z) = K_l act(z) + b_l.

resdyn's path-norm theorem needs the activation written as a relu expansion
act(u) = sum_r s_r relu(a_r u - t_r) (a finite sum or a uniform mixture over t_r). For such an
act, A_act = sum_r |s_r| |a_r| and the bias cost beta_act(b) = sum_r |s_r| |a_r b - t_r|:

=================  =======================================  =====  ===============================
act                expansion                                A_act  beta_act(b)
=================  =======================================  =====  ===============================
relu               relu(u)                                  1      |b|
shifted_relu tau   relu(u - tau)                            1      |b - tau|
soft_threshold     relu(u - tau) - relu(-u - tau)           2      |b - tau| + |b + tau|
smooth_dead_zone   (1/delta) int_tau^{tau+delta} [relu(u-s)  2      (1/delta) int_tau^{tau+delta}
                   - relu(-u-s)] ds                                (|b - s| + |b + s|) ds
=================  =======================================  =====  ===============================

tanh and gelu have no such expansion with finite mass here; their path-norm bounds are NaN.

The path-norm vector N_l in R^m_+ (one entry per state coordinate) follows

    N_0 = (||(A_j, c_j)||_2)_j,     N_{l+1} = N_l + h (M_l N_l + g_l),
    two-layer: M_l = kappa A_act |V_l| |W_l|,  g_l = kappa |V_l| beta_act(b_l),
    one-layer: M_l = kappa A_act |K_l|,        g_l = kappa |K_l| beta_act(0) 1 + |b_l|,

and the weighted path norm of output y is P_y = |R_y| . N_L + |r_y|; P = max_y P_y. As h -> 0 the
recursion is the Euler scheme of the linear ODE N' = M(t) N + g(t), whose solution at T gives the
continuous-time (flow-map) path norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.activations import Activation
from ..models.base import Model, Params

__all__ = [
    "ReluExpansion",
    "continuous_path_norm",
    "flow_path_norm",
    "integrate_path_norm",
    "path_norm",
    "path_norm_rademacher",
    "path_norm_state",
    "relu_expansion",
    "supported",
]

DEFAULT_KAPPA = 4.0


@dataclass(frozen=True)
class ReluExpansion:
    """act(u) = sum_r s_r relu(a_r u - t_r): slope mass A_act, bias cost beta_act(b), and the
    half-width ``band`` of a dead band [-band, band] on which every piece is zero (0: none)."""

    name: str
    slope: float
    bias_cost: Callable[[Tensor], Tensor]
    band: float


def _abs_integral(lo: float, hi: float, b: Tensor) -> Tensor:
    """int_lo^hi |s - b| ds (elementwise in b)."""

    def G(t: Tensor) -> Tensor:
        return 0.5 * t * t.abs()

    return G(hi - b) - G(lo - b)


def _smooth_delta(act: Activation) -> float:
    """The ramp length delta of a smooth_dead_zone activation, read off its values.

    Beyond the ramp act(tau + r) = r - delta / 2, so delta = 2 (r - act(tau + r)) for r > delta.
    """
    r = 1.0e3
    z = torch.tensor([act.tau + r], dtype=torch.float64)
    return float(2.0 * (r - act(z)[0]))


def relu_expansion(act: Activation) -> ReluExpansion | None:
    """The relu expansion of ``act`` (module table), or None when resdyn has none (tanh, gelu)."""
    tau = float(act.tau)
    if act.name == "relu":
        return ReluExpansion("relu", 1.0, lambda b: b.abs(), 0.0)
    if act.name == "shifted_relu":
        return ReluExpansion(act.name, 1.0, lambda b: (b - tau).abs(), tau)
    if act.name == "soft_threshold":
        return ReluExpansion(act.name, 2.0, lambda b: (b - tau).abs() + (b + tau).abs(), tau)
    if act.name == "smooth_dead_zone":
        delta = _smooth_delta(act)

        def cost(b: Tensor) -> Tensor:
            return (_abs_integral(tau, tau + delta, b) + _abs_integral(tau, tau + delta, -b)) / delta

        return ReluExpansion(act.name, 2.0, cost, tau)
    return None


def supported(model: Model) -> str | None:
    """None when the path-norm bounds apply to ``model``, else the reason they do not."""
    if getattr(model, "family", None) not in ("resnet", "ode_resnet"):
        fam = getattr(model, "family", None)
        return f"model family {fam!r} (path norms need 'resnet' or 'ode_resnet')"
    if relu_expansion(model.act) is None:
        return f"activation {model.act.name!r} has no relu expansion (allowed: relu, shifted_relu, " \
               "soft_threshold, smooth_dead_zone)"
    return None


def _f64(params: Params, grad: bool = False) -> Params:
    if grad:
        return {k: v.to(torch.float64) for k, v in params.items()}
    return {k: v.detach().to(torch.float64) for k, v in params.items()}


def _field(theta: Params, N: Tensor, exp: ReluExpansion, kappa: float,
           one: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """M N + g and the unit pre-activation levels mu for one layer's |parameters| ``theta``.

    ``theta`` holds W, b, V (two-layer) or K, b (one-layer) with leading axis E; N is (E, m).
    ``one`` (E,) weighs the N-free parts (g and |b| in mu): with N = e^s n held as the scaled n,
    passing n and one = e^{-s} gives e^{-s} (M N + g) and e^{-s} mu (the log-domain recursion).
    """
    one = torch.ones(N.shape[0], dtype=N.dtype) if one is None else one
    if "W" in theta:
        W, V, b = theta["W"].abs(), theta["V"].abs(), theta["b"]
        wn = torch.einsum("eqp,ep->eq", W, N)
        mu = wn + one[:, None] * b.abs()
        unit = exp.slope * wn + one[:, None] * exp.bias_cost(b)
        return kappa * torch.einsum("ejq,eq->ej", V, unit), mu
    K, b = theta["K"].abs(), theta["b"]
    unit = exp.slope * N + one[:, None] * exp.bias_cost(torch.zeros_like(N))
    return kappa * torch.einsum("ejq,eq->ej", K, unit) + one[:, None] * b.abs(), N


def _linear_parts(theta: Params, exp: ReluExpansion, kappa: float, m: int) -> tuple[Tensor, Tensor]:
    """(M, g) with M N + g the path-norm vector field of one layer: shapes (E, m, m), (E, m)."""
    if "W" in theta:
        W, V, b = theta["W"].abs(), theta["V"].abs(), theta["b"]
        return kappa * exp.slope * V @ W, kappa * torch.einsum("ejq,eq->ej", V, exp.bias_cost(b))
    K, b = theta["K"].abs(), theta["b"]
    g0 = exp.bias_cost(torch.zeros(b.shape[0], m, dtype=b.dtype))
    return kappa * exp.slope * K, kappa * torch.einsum("ejq,eq->ej", K, g0) + b.abs()


def _majorant_parts(
    ta: Params, tb: Params, exp: ReluExpansion, kappa: float, m: int
) -> tuple[Tensor, Tensor]:
    """Entrywise majorants of (M(t), g(t)) over a piece on which theta is linear from ``ta`` to
    ``tb``: |.| of a linear function and beta_act of a linear bias are convex, so their maxima are
    at the endpoints."""
    if "W" in ta:
        W = torch.maximum(ta["W"].abs(), tb["W"].abs())
        V = torch.maximum(ta["V"].abs(), tb["V"].abs())
        beta = torch.maximum(exp.bias_cost(ta["b"]), exp.bias_cost(tb["b"]))
        return kappa * exp.slope * V @ W, kappa * torch.einsum("ejq,eq->ej", V, beta)
    K = torch.maximum(ta["K"].abs(), tb["K"].abs())
    b = torch.maximum(ta["b"].abs(), tb["b"].abs())
    g0 = exp.bias_cost(torch.zeros(b.shape[0], m, dtype=b.dtype))
    return kappa * exp.slope * K, kappa * torch.einsum("ejq,eq->ej", K, g0) + b


def _names(model: Model) -> tuple[str, ...]:
    return ("W", "b", "V") if model.block == "two_layer" else ("K", "b")


def _layer(params: Params, names: tuple[str, ...], l: int) -> Params:
    return {n: params[n][:, l] for n in names}


def _n0(params: Params) -> Tensor:
    return torch.cat([params["A"], params["c"].unsqueeze(-1)], dim=-1).norm(dim=-1)


def _readout(params: Params, N: Tensor) -> Tensor:
    """max_y (|R_y| . N + |r_y|), shape (E,)."""
    return (torch.einsum("eyj,ej->ey", params["R"].abs(), N) + params["r"].abs()).amax(-1)


def _log_readout(params: Params, n: Tensor, s: Tensor) -> Tensor:
    """log max_y (|R_y| . N + |r_y|) for N = e^s n, without forming e^s."""
    one = torch.exp(-s)
    inner = torch.einsum("eyj,ej->ey", params["R"].abs(), n) + one[:, None] * params["r"].abs()
    return s + torch.log(inner.amax(-1))


def _renormalise(n: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """(n / c, s + log c) with c = max_j n_j (> 0): keeps the scaled vector at order 1."""
    c = n.amax(-1).clamp_min(torch.finfo(n.dtype).tiny)
    return n / c[:, None], s + torch.log(c)


@dataclass(frozen=True)
class PathNormState:
    """N_L (E, m), the path norm P (E,), and the largest unit pre-activation level
    mu* = max_{l, q} mu_{l,q} (E,), where mu_{l,q} = sum_p |W_{l,qp}| N_l^p + |b_{l,q}|
    (one-layer: mu_{l,p} = N_l^p) bounds |pre-activation(x)| <= mu ||x~||_2.

    The recursion runs in the log domain (N = e^s n with max_j n_j = 1), so ``log_P`` and
    ``log_mu`` are finite whatever the size; ``P``, ``mu`` and ``N`` are their exponentials and
    read +inf beyond float64 (about e^709): report ``log_P`` then.
    """

    N: Tensor
    P: Tensor
    mu: Tensor
    log_P: Tensor | None = None  # noqa: N815 (the P of docs/theory.md)
    log_mu: Tensor | None = None


def path_norm_state(
    model: Model, params: Params, kappa: float = DEFAULT_KAPPA, grad: bool = False
) -> PathNormState:
    """The discrete weighted path norm of a ResNet (module docstring), per model, in the log
    domain; with ``grad`` the result is differentiable in ``params`` (used by the Monte-Carlo
    estimator)."""
    reason = supported(model)
    if reason is not None or model.family != "resnet":
        raise ValueError("path_norm_state needs a 'resnet' with a relu-expandable activation; "
                         f"got {reason or model.family}")
    _check_kappa(kappa)
    p = _f64(params, grad)
    exp = relu_expansion(model.act)
    names = _names(model)
    n, s = _renormalise(_n0(p), torch.zeros(_n0(p).shape[0], dtype=torch.float64))
    log_mu = torch.full_like(s, -math.inf)
    h = model.step
    for l in range(model.depth):
        theta = _layer(p, names, 0 if model.tied else l)
        drift, mu_l = _field(theta, n, exp, kappa, torch.exp(-s))
        log_mu = torch.maximum(log_mu, s + torch.log(mu_l.amax(-1)))
        n, s = _renormalise(n + h * drift, s)
    log_P = _log_readout(p, n, s)
    return PathNormState(torch.exp(s)[:, None] * n, torch.exp(log_P), torch.exp(log_mu), log_P, log_mu)


def path_norm(model: Model, params: Params, kappa: float = DEFAULT_KAPPA) -> Tensor:
    """P = max_y P_y for each model, shape (E,)."""
    return path_norm_state(model, params, kappa).P


def _check_kappa(kappa: float) -> None:
    if not (isinstance(kappa, int | float) and math.isfinite(kappa) and kappa > 2):
        raise ValueError(f"kappa must be a finite number > 2 (the contraction needs kappa > 2 Lip(relu)), "
                         f"got {kappa!r}")


# Largest ||M dt||_1 one matrix exponential takes: e^50 stays far inside float64, so a long or
# steep piece is cut into equal sub-steps (the flow of a constant system composes exactly).
_EXPM_MAX = 50.0


def _expm_step(M: Tensor, g: Tensor, n: Tensor, s: Tensor, dt: float) -> tuple[Tensor, Tensor]:
    """Exact solution at time dt of N' = M N + g (constant M, g) from N = e^s n, in the log
    domain: [n; e^{-s}] is mapped by expm([[M dt, g dt], [0, 0]]) and renormalised."""
    E, m = n.shape
    norm = float((M.abs().sum(-2).amax(-1) * dt).max()) if M.numel() else 0.0
    pieces = max(1, math.ceil(norm / _EXPM_MAX))
    aug = torch.zeros(E, m + 1, m + 1, dtype=n.dtype)
    aug[:, :m, :m] = M * (dt / pieces)
    aug[:, :m, m] = g * (dt / pieces)
    step = torch.linalg.matrix_exp(aug)
    for _ in range(pieces):
        state = torch.cat([n, torch.exp(-s)[:, None]], -1).unsqueeze(-1)
        n, s = _renormalise((step @ state)[:, :m, 0], s)
    return n, s


def flow_path_norm(
    model: Model, params: Params, kappa: float = DEFAULT_KAPPA, substeps: int = 8
) -> PathNormState:
    """The continuous-time path norm: N(T) of N' = M(t) N + g(t), N(0) = N_0.

    ODEResNet, interpolation 'constant', and ResNet (read as its piecewise-constant interpolant
    theta(t) = theta_l on [l h, (l+1) h)): exact, one matrix exponential per interval.
    ODEResNet, 'linear': each knot interval is cut into ``substeps`` pieces and on each piece
    M, g are replaced by their entrywise majorants (|W|, |V|, |K| at the larger endpoint,
    beta_act(b) at the larger endpoint: |linear| and beta_act are convex), so the result is an
    upper bound on N(T) by comparison for cooperative linear systems (docs/theory.md, 2.5).
    Computed in the log domain (``log_P`` is finite whatever the size; see :class:`PathNormState`).
    ``mu`` is the largest unit level over the knots (and sub-knots), an under-estimate of the sup
    over t for 'linear' paths; it is used only by the dead-zone term of discrete models.
    """
    reason = supported(model)
    if reason is not None:
        raise ValueError(f"flow_path_norm: unsupported model: {reason}")
    _check_kappa(kappa)
    p = _f64(params)
    exp = relu_expansion(model.act)
    names = _names(model)
    n0 = _n0(p)
    m = n0.shape[1]
    n, s = _renormalise(n0, torch.zeros(n0.shape[0], dtype=torch.float64))
    log_mu = torch.full_like(s, -math.inf)
    if model.family == "resnet":
        pieces = [(_layer(p, names, 0 if model.tied else l), model.step) for l in range(model.depth)]
    elif model.interpolation == "constant":
        pieces = [(_layer(p, names, q), model.knot_step) for q in range(model.knots)]
    else:
        pieces = []
        for q in range(model.knots):
            left, right = _layer(p, names, q), _layer(p, names, q + 1)
            for j in range(substeps):
                a, bb = j / substeps, (j + 1) / substeps
                ta = {n: left[n] + a * (right[n] - left[n]) for n in names}
                tb = {n: left[n] + bb * (right[n] - left[n]) for n in names}
                pieces.append(((ta, tb), model.knot_step / substeps))
    for theta, dt in pieces:
        if isinstance(theta, tuple):
            ta, tb = theta
            M, g = _majorant_parts(ta, tb, exp, kappa, m)
            _, mu_l = _field(ta, n, exp, kappa, torch.exp(-s))
        else:
            M, g = _linear_parts(theta, exp, kappa, m)
            _, mu_l = _field(theta, n, exp, kappa, torch.exp(-s))
        log_mu = torch.maximum(log_mu, s + torch.log(mu_l.amax(-1)))
        n, s = _expm_step(M, g, n, s, dt)
    log_P = _log_readout(p, n, s)
    return PathNormState(torch.exp(s)[:, None] * n, torch.exp(log_P), torch.exp(log_mu), log_P, log_mu)


def integrate_path_norm(
    field: Callable[[float], tuple[Tensor, Tensor]], N0: Tensor, horizon: float, steps: int
) -> Tensor:
    """N(T) for N' = M(t) N + g(t) by classical RK4 with ``steps`` steps; ``field(t) = (M, g)``
    with shapes (E, m, m), (E, m). A numerical reference for smooth paths (not itself a bound)."""
    N, dt = N0.clone(), horizon / steps

    def f(t: float, n: Tensor) -> Tensor:
        M, g = field(t)
        return torch.einsum("eij,ej->ei", M, n) + g

    for i in range(steps):
        t = i * dt
        k1 = f(t, N)
        k2 = f(t + dt / 2, N + dt / 2 * k1)
        k3 = f(t + dt / 2, N + dt / 2 * k2)
        k4 = f(t + dt, N + dt * k3)
        N = N + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return N


def continuous_path_norm(
    theta: Callable[[float], Params],
    params_io: Params,
    act: Activation,
    horizon: float,
    kappa: float = DEFAULT_KAPPA,
    steps: int = 4096,
) -> Tensor:
    """P of the continuous-time model whose layer parameters at time t are ``theta(t)`` (dict of
    (E, ...) tensors: W, b, V or K, b), with embedding/readout ``params_io`` (A, c, R, r): N(T)
    by RK4 (:func:`integrate_path_norm`). Used to check that the discrete path norm converges."""
    exp = relu_expansion(act)
    if exp is None:
        raise ValueError(f"activation {act.name!r} has no relu expansion")
    _check_kappa(kappa)
    p = _f64(params_io)
    N0 = _n0(p)
    m = N0.shape[1]

    def field(t: float) -> tuple[Tensor, Tensor]:
        return _linear_parts(_f64(theta(t)), exp, kappa, m)

    return _readout(p, integrate_path_norm(field, N0, horizon, steps))


def path_norm_rademacher(
    Q: Tensor | float,
    sq_norms: Tensor,
    kappa: float = DEFAULT_KAPPA,
    residual: bool = True,
    active: Tensor | None = None,
) -> Tensor:
    """resdyn's bound on the empirical Rademacher complexity of F_Q (docs/theory.md, Thm 2.1):

        Rad_S(F_Q) <= (Q / S) (c_0 sqrt(sum_i ||x~_i||^2) + (c - 1) sqrt(sum_{i in A} ||x~_i||^2)),

    c = kappa / (kappa - 2), where ``sq_norms[i] = ||x~_i||^2`` over the sample and A (``active``,
    a boolean mask; default: every sample) is the set of samples not certified dead. With
    ``residual=False`` (the depth-0 class {x -> v . x~ : ||v||_2 <= Q}) the bound is
    (Q / S) sqrt(sum_i ||x~_i||^2); with every sample active it is Q c sqrt(sum ||x~||^2) / S.
    """
    _check_kappa(kappa)
    S = sq_norms.shape[-1]
    total = sq_norms.sum(-1).sqrt()
    if not residual:
        return torch.as_tensor(Q, dtype=torch.float64) * total / S
    c = kappa / (kappa - 2.0)
    act_sum = total if active is None else (sq_norms * active).sum(-1).sqrt()
    return torch.as_tensor(Q, dtype=torch.float64) * (total + (c - 1.0) * act_sum) / S
