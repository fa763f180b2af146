"""Path and flow norms in the log domain, and which solver the flow certificate covers."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from resdyn.models import ODEResNet, ResNet, init_params
from resdyn.theory.bounds import bound_terms
from resdyn.theory.pathnorm import flow_path_norm, path_norm_state

KAPPA = 4.0


def _big_resnet(scale: float, depth: int = 30, width: int = 4, seed: int = 3):
    m = ResNet(in_dim=3, out_dim=2, width=width, hidden=width, depth=depth, activation="relu")
    p = init_params(m, [seed], torch.float64)
    p["W"] = p["W"] * scale
    p["V"] = p["V"] * scale
    return m, p


def _log_recursion(m, p) -> float:
    """log P of the discrete recursion N_{l+1} = N_l + h kappa |V| (|W| N_l + |b|) (relu: A = 1,
    beta(b) = |b|), every sum taken as a logsumexp of logs: never forms N itself."""
    def lg(t):
        t = t[0].detach().numpy()
        with np.errstate(divide="ignore"):
            return np.log(np.abs(t))

    A, c = p["A"][0].numpy(), p["c"][0].numpy()
    logN = 0.5 * np.log((A * A).sum(-1) + c * c)
    h = m.step
    for l in range(m.depth):
        lW, lV, lb = lg(p["W"][:, l]), lg(p["V"][:, l]), lg(p["b"][:, l])
        unit = np.logaddexp(logsumexp(lW + logN[None, :], axis=1), lb)          # log(|W| N + |b|)
        drift = math.log(h * KAPPA) + logsumexp(lV + unit[None, :], axis=1)      # log(h kappa |V| unit)
        logN = np.logaddexp(logN, drift)
    lR, lr = lg(p["R"]), lg(p["r"])
    return float(np.max(np.logaddexp(logsumexp(lR + logN[None, :], axis=1), lr)))


def test_path_norm_of_a_huge_network_is_a_finite_log_matching_an_independent_recursion():
    m, p = _big_resnet(1e5, depth=40)
    st = path_norm_state(m, p, KAPPA)
    ref = _log_recursion(m, p)
    assert ref > 800  # beyond float64: exp(ref) is inf
    assert math.isinf(float(st.P[0])) and math.isfinite(float(st.log_P[0]))
    assert float(st.log_P[0]) == pytest.approx(ref, rel=1e-12)
    # at an ordinary size both agree with the plain value
    m2, p2 = _big_resnet(1.0)
    st2 = path_norm_state(m2, p2, KAPPA)
    assert float(st2.log_P[0]) == pytest.approx(_log_recursion(m2, p2), rel=1e-12)
    assert float(st2.P[0]) == pytest.approx(math.exp(_log_recursion(m2, p2)), rel=1e-10)


def _flow_mpmath(m, p) -> float:
    """log P of the exact flow of the piecewise-constant ResNet interpolant, each interval's
    matrix exponential in 60-digit arithmetic (mpmath), with no rescaling at all."""
    mpmath.mp.dps = 60
    A, c = p["A"][0].numpy(), p["c"][0].numpy()
    N = mpmath.matrix([math.sqrt(float((A[j] ** 2).sum() + c[j] ** 2)) for j in range(A.shape[0])] + [1])
    w = A.shape[0]
    for l in range(m.depth):
        W, V, b = (np.abs(p[k][0, l].numpy()) for k in ("W", "V", "b"))
        M = KAPPA * V @ W
        g = KAPPA * V @ b
        aug = mpmath.zeros(w + 1, w + 1)
        for i in range(w):
            for j in range(w):
                aug[i, j] = M[i, j] * m.step
            aug[i, w] = g[i] * m.step
        N = mpmath.expm(aug) * N
    R, r = np.abs(p["R"][0].numpy()), np.abs(p["r"][0].numpy())
    P = max(sum(R[y, j] * N[j] for j in range(w)) + r[y] for y in range(R.shape[0]))
    return float(mpmath.log(P))


def test_flow_path_norm_in_log_domain_matches_high_precision_flow():
    m, p = _big_resnet(20.0, depth=12)
    fl = flow_path_norm(m, p, KAPPA)
    ref = _flow_mpmath(m, p)
    assert ref > 800 and math.isinf(float(fl.P[0]))
    assert float(fl.log_P[0]) == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("method", ["euler", "rk4", "midpoint"])
def test_flow_certificate_only_for_the_solver_it_covers(method):
    m = ODEResNet(in_dim=2, out_dim=2, width=4, hidden=4, knots=3, activation="relu", method=method)
    p = init_params(m, [0], torch.float64)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    out = bound_terms(m, p, x, y, {"families": ("path_norm",)})
    assert math.isfinite(out["flow_bound.log"]) and math.isfinite(out["flow_bound.log_path_norm"])
    if method == "euler":
        assert out["flow_bound.covered"] == 1.0 and math.isfinite(out["flow_bound"])
        assert math.log(out["flow_bound"]) == pytest.approx(out["flow_bound.log"], rel=1e-10)
        assert math.isfinite(out["test_error_bound"])
    else:
        assert out["flow_bound.covered"] == 0.0
        assert math.isnan(out["flow_bound"]) and math.isnan(out["test_error_bound"])
