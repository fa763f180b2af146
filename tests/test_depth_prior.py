"""The Brownian depth prior (resdyn.theory.depth_prior): its covariance, its KL against the dense
Gaussian formula, the whitening round trip, and the depth limits of docs/depth-prior.md."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from resdyn.theory.depth_prior import BrownianPrior, iid_kl

PRIOR = BrownianPrior(start=0.3, rate=0.7, horizon=2.0)


def test_offsets_have_the_brownian_covariance():
    L = 7
    A = PRIOR.offsets(torch.eye(L, dtype=torch.float64), layer_dim=0)  # column j: offsets of e_j
    h = 2.0 / L
    expected = torch.tensor([[0.3**2 + 0.7**2 * h * min(j, k) for k in range(L)] for j in range(L)],
                            dtype=torch.float64)
    torch.testing.assert_close(A @ A.T, expected, rtol=0, atol=1e-14)
    torch.testing.assert_close(PRIOR.covariance(L), expected, rtol=0, atol=1e-15)


def test_kl_is_the_gaussian_kl_with_that_covariance():
    L, E = 6, 3
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(E, L, 2, 3, generator=g, dtype=torch.float64)
    C = PRIOR.covariance(L)
    ours = PRIOR.kl(delta)
    for e in range(E):
        total = 0.0
        for entry in delta[e].reshape(L, -1).T:  # each weight entry is one L-dimensional Gaussian
            q = torch.distributions.MultivariateNormal(entry, covariance_matrix=C)
            zero = torch.zeros(L, dtype=torch.float64)
            p = torch.distributions.MultivariateNormal(zero, covariance_matrix=C)
            total += float(torch.distributions.kl_divergence(q, p))
        assert ours[e].item() == pytest.approx(total, rel=1e-10)


def test_whiten_inverts_offsets():
    g = torch.Generator().manual_seed(1)
    eps = torch.randn(2, 9, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(PRIOR.whiten(PRIOR.offsets(eps)), eps, rtol=0, atol=1e-13)
    assert PRIOR.kl(PRIOR.offsets(eps)).tolist() == pytest.approx((0.5 * eps.square().sum((1, 2))).tolist())


def _smooth_deviation(L: int, T: float) -> torch.Tensor:
    t = torch.arange(L, dtype=torch.float64) * (T / L)
    return torch.stack([torch.sin(3 * t) + 0.5, t.square()], dim=-1).unsqueeze(0)  # (1, L, 2)


def test_kl_of_a_smooth_deviation_converges_in_depth_and_the_iid_kl_grows():
    T, s0, sigma = 2.0, 0.3, 0.7
    prior = BrownianPrior(s0, sigma, T)
    # Limit: |g(0)|^2 / (2 s0^2) + int_0^T |g'|^2 dt / (2 sigma^2), g = (sin 3t + 1/2, t^2).
    int_g1 = 9 * (T / 2 + math.sin(4 * 3 * T / 2) / (4 * 3))  # int 9 cos^2(3t) dt
    int_g2 = 4 * T**3 / 3
    limit = 0.25 / (2 * s0**2) + (int_g1 + int_g2) / (2 * sigma**2)
    errors = []
    for L in (16, 64, 256, 1024):
        kl = float(prior.kl(_smooth_deviation(L, T)))
        errors.append(abs(kl - limit))
    assert errors[-1] < 0.01 * limit
    assert all(b < 0.6 * a for a, b in itertools.pairwise(errors))  # about 1/4 per 4x
    # i.i.d. prior of scale s: KL_L / L -> (1 / (2 s^2 T)) int_0^T |g|^2 dt, linear growth in L.
    s = 0.5
    int_g_sq = (T / 2 - math.sin(6 * T) / 12) + (1 - math.cos(3 * T)) / 3 + T / 4 + T**5 / 5
    rate = int_g_sq / (2 * s**2 * T)
    for L in (256, 1024):
        assert float(iid_kl(_smooth_deviation(L, T), s)) / L == pytest.approx(rate, rel=0.02)


def test_rough_deviation_costs_more_with_depth():
    # An independent deviation per layer is not a Cameron-Martin path: its KL grows like L^2.
    g = torch.Generator().manual_seed(2)
    kls = [float(PRIOR.kl(torch.randn(1, L, 1, generator=g, dtype=torch.float64))) for L in (16, 256)]
    assert kls[1] / kls[0] > 100


@pytest.mark.parametrize("kwargs", [dict(start=0, rate=1), dict(start=1, rate=-1),
                                    dict(start=1, rate=1, horizon=float("inf"))])
def test_bad_prior_is_refused(kwargs):
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        BrownianPrior(**kwargs)


def test_bad_scale_and_depth_are_refused():
    with pytest.raises(ValueError, match="scale"):
        iid_kl(torch.zeros(1, 2), 0.0)
    with pytest.raises(ValueError, match="depth"):
        PRIOR.step_scales(0)
