"""KL estimators against targets whose KL from N(0, I) is known (closed form or quadrature)."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import norm

from resdyn.analysis.kl import kl_gaussian_fit, kl_knn
from resdyn.models.meanfield import MeanFieldResNet

N = 1024
MODEL = MeanFieldResNet()
DIMS = (MODEL.encoder_particle_dim, MODEL.predictor_particle_dim)  # p = 5 and q = 4 at d = 2


def gauss_kl(mu, cov):
    _, logdet = np.linalg.slogdet(cov)
    return 0.5 * (np.trace(cov) + mu @ mu - len(mu) - logdet)


def gaussian_targets(p):
    rng = np.random.default_rng(p)
    A = rng.standard_normal((p, p))
    e1 = np.eye(p)[0]
    return {
        "shift 0.2": (math.sqrt(0.4) * e1, np.eye(p)),
        "shift 5": (math.sqrt(10.0) * e1, np.eye(p)),
        "wide 1.3": (np.zeros(p), 1.3**2 * np.eye(p)),
        "wide 1.6": (np.zeros(p), 1.6**2 * np.eye(p)),
        "narrow 0.5": (np.zeros(p), 0.25 * np.eye(p)),
        "narrow 0.2": (np.zeros(p), 0.04 * np.eye(p)),
        "anisotropic": (0.5 * np.ones(p), A @ A.T / p * 0.6 + 0.1 * np.eye(p)),
    }


@pytest.mark.parametrize("p", DIMS)
def test_knn_kl_on_gaussian_targets_between_02_and_5_nats(p):
    rng = np.random.default_rng(100 + p)
    for name, (mu, cov) in gaussian_targets(p).items():
        true = gauss_kl(mu, cov)
        assert 0.2 <= true <= 6.0, name
        L = np.linalg.cholesky(cov)
        for _ in range(3):
            x = mu + rng.standard_normal((N, p)) @ L.T
            est = float(kl_knn(x))
            assert abs(est - true) <= 0.1 * true + 0.05, (p, name, true, est)
            # The Gaussian fit is consistent for Gaussian targets.
            assert abs(float(kl_gaussian_fit(x)) - true) <= 0.1 * true + 0.05, (p, name)


def test_knn_kl_reads_zero_at_initialisation():
    rng = np.random.default_rng(7)
    vals = kl_knn(rng.standard_normal((8, N, 5)))
    assert vals.shape == (8,)
    assert abs(float(vals.mean())) < 0.02 and float(vals.abs().max()) < 0.05


def _mixture_1d_kl(m, s):
    def f(x):
        return 0.5 * norm.pdf(x, m, s) + 0.5 * norm.pdf(x, -m, s)

    def integrand(x):
        fx = f(x)
        return fx * (math.log(fx) - norm.logpdf(x)) if fx > 0 else 0.0

    return integrate.quad(integrand, -m - 12 * s, m + 12 * s, limit=200, points=[-m, 0.0, m])[0]


@pytest.mark.parametrize("p", DIMS)
def test_knn_kl_on_a_gaussian_mixture_at_the_particle_dimension(p):
    # theta_1 ~ (N(m, s^2) + N(-m, s^2)) / 2 (1-D quadrature), theta_2..p ~ N(0, 0.8^2) (closed form).
    rng = np.random.default_rng(200 + p)
    for m, s in ((1.5, 0.5), (1.0, 0.6), (2.0, 0.7)):
        true = _mixture_1d_kl(m, s) + (p - 1) * (0.5 * (0.64 - 1 - math.log(0.64)))
        for _ in range(3):
            x = 0.8 * rng.standard_normal((N, p))
            x[:, 0] = rng.choice([-m, m], N) + s * rng.standard_normal(N)
            est = float(kl_knn(x))
            assert abs(est - true) <= 0.1 * true + 0.05, (p, m, s, true, est)
            # Gaussian fit is a lower bound (up to sampling noise) and misses the bimodality.
            assert float(kl_gaussian_fit(x)) < true


def test_knn_kl_on_a_correlated_2d_mixture_by_grid_quadrature():
    means = np.array([[1.2, 0.6], [-0.8, -1.0]])
    covs = np.array([[[0.5, 0.3], [0.3, 0.4]], [[0.3, -0.1], [-0.1, 0.6]]])
    weights = np.array([0.6, 0.4])

    def density(pts):
        out = np.zeros(len(pts))
        for w, mu, c in zip(weights, means, covs, strict=True):
            d = pts - mu
            ci = np.linalg.inv(c)
            norm_c = 2 * math.pi * math.sqrt(np.linalg.det(c))
            out += w * np.exp(-0.5 * np.einsum("ni,ij,nj->n", d, ci, d)) / norm_c
        return out

    g = np.linspace(-8, 8, 1601)
    X, Y = np.meshgrid(g, g)
    pts = np.stack([X.ravel(), Y.ravel()], 1)
    f = density(pts)
    logg = -0.5 * (pts**2).sum(1) - math.log(2 * math.pi)
    ok = f > 1e-300
    true = float(np.sum(f[ok] * (np.log(f[ok]) - logg[ok])) * (g[1] - g[0]) ** 2)
    assert 0.2 < true < 5
    rng = np.random.default_rng(3)
    for _ in range(3):
        comp = rng.choice(2, N, p=weights)
        x = np.stack([rng.multivariate_normal(means[c], covs[c]) for c in comp])
        est = float(kl_knn(x))
        assert abs(est - true) <= 0.1 * true + 0.05, (true, est)


def test_kl_estimators_check_their_arguments():
    x = torch.randn(100, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="k must be"):
        kl_knn(x, k=100)
    with pytest.raises(ValueError, match="shape"):
        kl_knn(torch.randn(10))
    with pytest.raises(ValueError, match="coincident"):
        kl_knn(torch.zeros(20, 3))
    assert kl_knn(torch.randn(2, 4, 100, 3)).shape == (2, 4)
    assert math.isinf(float(kl_gaussian_fit(torch.zeros(20, 3))))


def test_uncorrected_knn_kl_by_hand():
    """The raw estimate (module docstring of resdyn.analysis.kl) by another route: brute-force
    distances, psi(k) - psi(N) = -sum_{j=k}^{N-1} 1/j, and V_5 = 8 pi^2 / 15 in closed form."""
    x = np.random.default_rng(0).normal(size=(50, 5))
    k, n, p = 3, 50, 5
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    eps = np.sort(d, axis=1)[:, k]  # column 0 is the point itself
    const = (-sum(1.0 / j for j in range(k, n)) - math.log(8 * math.pi**2 / 15)
             + 0.5 * p * math.log(2 * math.pi))
    hand = const + float(np.mean(-p * np.log(eps) + 0.5 * (x**2).sum(-1)))
    assert float(kl_knn(x, k=k, null_correction=False)) == pytest.approx(hand, rel=1e-12)
