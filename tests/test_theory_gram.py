"""Mean-field Gram matrices: the documented normalisation whatever the learning-rate setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resdyn.analysis.gram import gram_matrices, gram_scales, lambda_min
from resdyn.data.synthetic import two_spirals
from resdyn.models import init_params
from resdyn.models.meanfield import PREDICTOR_PARAMS, MeanFieldResNet


def _points(n: int = 16) -> torch.Tensor:
    x, _ = two_spirals(n, seed=5)
    x = x.to(torch.float64)
    return (x - x.mean(0)) / x.std(0)


def _g2_by_formula(model: MeanFieldResNet, p: dict, x: torch.Tensor) -> torch.Tensor:
    """G2[i, j] = (1/K) sum_k grad_omega[beta h(z_L(x_i); omega_k)] . grad_omega[beta h(z_L(x_j); omega_k)],
    h(z; a, v, c) = a tanh(v . z + c): the gradient (tanh, a sech^2 z, a sech^2) written out by hand."""
    z = model.encode(p, x.unsqueeze(0))[0]                       # (n, d)
    a, v, c = p["a"][0], p["v"][0], p["c"][0]
    pre = z @ v.T + c                                            # (n, K)
    t, s2 = torch.tanh(pre), 1.0 - torch.tanh(pre) ** 2
    g_a = t                                                      # (n, K)
    g_v = (a * s2).unsqueeze(-1) * z.unsqueeze(1)                # (n, K, d)
    g_c = a * s2
    inner = g_a @ g_a.T + torch.einsum("ikd,jkd->ij", g_v, g_v) + g_c @ g_c.T
    return model.beta**2 * inner / model.predictor_width


@pytest.mark.parametrize("mean_field_lr", [True, False])
@pytest.mark.parametrize("tied", [False, True])
def test_g2_and_g1_at_init_equal_the_documented_formula_with_either_rate_setting(mean_field_lr, tied):
    m = MeanFieldResNet(in_dim=2, depth=3, width=32, predictor_width=24, beta=2.0, tied=tied,
                        mean_field_lr=mean_field_lr)
    p = init_params(m, [4], torch.float64)
    x = _points(10)
    G = gram_matrices(m, p, x)
    assert torch.allclose(G["G2"][0], _g2_by_formula(m, p, x), atol=1e-10, rtol=0)
    # G1 carries L M (M when tied) whatever the rate setting: (1/(L M)) G1 is the raw gradient Gram
    raw = gram_matrices(m, p, x, scales={})["G1"][0]
    enc = 32 * (1 if tied else 3)
    assert gram_scales(m)["u"] == enc and gram_scales(m)["a"] == 24
    assert torch.allclose(G["G1"][0], enc * raw, atol=1e-10, rtol=0)


def _g2_infinite_width(x: np.ndarray, beta: float, samples: int = 1 << 20, seed: int = 0) -> float:
    """lambda_min of the width-to-infinity G2 at init: the encoder is the identity (its particles'
    u are centred) and G2[i, j] = beta^2 E_omega[tanh_i tanh_j + a^2 sech2_i sech2_j (x_i . x_j + 1)]
    (x_i . x_j + 1 from v and c) with omega = (a, v, c) ~ N(0, I): Monte Carlo over ``samples``
    draws, in numpy."""
    rng = np.random.default_rng(seed)
    n, d = x.shape
    G = np.zeros((n, n))
    for _ in range(samples // (1 << 16)):
        a = rng.standard_normal(1 << 16)
        v = rng.standard_normal((1 << 16, d))
        c = rng.standard_normal(1 << 16)
        pre = x @ v.T + c
        t = np.tanh(pre)
        s2 = 1 - t * t
        G += t @ t.T + ((a * a) * s2) @ s2.T * (x @ x.T + 1.0)
    return float(np.linalg.eigvalsh(beta**2 * G / samples)[0])


def _g2_quadrature(x: np.ndarray, nodes: int = 48) -> float:
    """The same infinite-width lambda_min by Gauss-Hermite quadrature over (v, c) in R^3 (E a^2 = 1)."""
    t, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    grid = np.meshgrid(t, t, t, indexing="ij")
    W = np.einsum("i,j,k->ijk", w, w, w).ravel()
    pre = x @ np.stack([grid[0].ravel(), grid[1].ravel()], 1).T + grid[2].ravel()
    th = np.tanh(pre)
    s2 = 1 - th * th
    return float(np.linalg.eigvalsh((th * W) @ th.T + ((s2 * W) @ s2.T) * (x @ x.T + 1.0))[0])


@pytest.mark.slow
def test_lambda_min_g2_at_init_is_width_independent_and_near_its_infinite_width_value():
    x = _points(16)
    limit = _g2_infinite_width(x.numpy(), beta=1.0, samples=1 << 22)
    # the Monte-Carlo limit itself is checked against quadrature (lambda_min is a small eigenvalue,
    # so entry noise of a smaller Monte-Carlo sample moves it by percents)
    assert limit == pytest.approx(_g2_quadrature(x.numpy()), rel=0.005)
    for mean_field_lr in (True, False):
        for W in (1024, 2048, 4096):
            m = MeanFieldResNet(in_dim=2, depth=10, width=W, predictor_width=W, mean_field_lr=mean_field_lr)
            vals = lambda_min(gram_matrices(m, init_params(m, list(range(8)), torch.float64), x,
                                            groups={"G2": PREDICTOR_PARAMS})["G2"])
            mean = float(vals.mean())
            print(f"mean_field_lr={mean_field_lr} M=K={W}: mean lambda_min(G2) {mean:.5f}, "
                  f"limit {limit:.5f}, relative error {abs(mean - limit) / limit:.3f}")
            assert abs(mean - limit) <= 0.15 * limit
