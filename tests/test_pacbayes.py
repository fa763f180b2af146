"""PAC-Bayes bounds: kl inversion against brute force, the Monte-Carlo step, Gaussian KL, the
composed certificate and the bound objectives."""

import math

import pytest
import torch

from resdyn.theory.pacbayes import (
    bound_objective,
    bounded_cross_entropy,
    certify,
    gaussian_kl,
    kl_bernoulli,
    kl_inv,
    mc_risk_bound,
    pac_bayes_kl_bound,
    posterior_kl,
)


def brute_kl_inv(q: torch.Tensor, c: torch.Tensor, grid: int = 1000, levels: int = 4) -> torch.Tensor:
    """sup {p in [q, 1]: kl(q||p) <= c} by grid search, refined ``levels`` times inside the
    bracketing cell (final spacing (1 - q) / grid^levels <= 1e-12); no bisection involved."""
    lo, hi = q.clone(), torch.ones_like(q)
    steps = torch.arange(grid + 1, dtype=torch.float64)
    for _ in range(levels):
        pts = lo[:, None] + (hi - lo)[:, None] * steps / grid                  # (N, grid+1)
        feasible = kl_bernoulli(q[:, None], pts) <= c[:, None]
        last = feasible.sum(1) - 1                                             # monotone in p
        i = last.clamp(min=0)
        new_lo = pts.gather(1, i[:, None]).squeeze(1)
        new_hi = pts.gather(1, (i + 1).clamp(max=grid)[:, None]).squeeze(1)
        lo, hi = new_lo, new_hi
    return lo


def _pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(n, generator=g, dtype=torch.float64)
    q[:100] = 0.0                                   # q = 0
    q[100:150] = torch.rand(50, generator=g, dtype=torch.float64) * 1e-3
    c = 10 ** (torch.rand(n, generator=g, dtype=torch.float64) * 6 - 5)   # 1e-5 .. 10
    c[150:250] = 10 ** (torch.rand(100, generator=g, dtype=torch.float64) * 2 + 1)  # large: 10..1000
    return q, c


def test_kl_inv_matches_brute_force_grid_on_1000_pairs():
    q, c = _pairs(1000, 0)
    got = kl_inv(q, c)
    want = torch.cat([brute_kl_inv(q[s:s + 100], c[s:s + 100]) for s in range(0, 1000, 100)])
    assert (got - want).abs().max().item() < 1e-9
    # The answer is (just) feasible from above: kl(q || got) ~ c and got >= q.
    assert bool(torch.all(got >= q))
    inner = got < 1 - 1e-9
    assert torch.allclose(kl_bernoulli(q[inner], got[inner]), c[inner], rtol=1e-6)


def test_kl_inv_closed_forms_and_edges():
    c = torch.tensor([0.0, 1e-3, 0.5, 3.0, 50.0], dtype=torch.float64)
    # kl(0 || p) = -ln(1 - p), so kl^-1(0, c) = 1 - exp(-c).
    assert torch.allclose(kl_inv(torch.zeros(5), c), -torch.expm1(-c), rtol=0, atol=1e-14)
    assert kl_inv(1.0, 0.3).item() == 1.0
    assert kl_inv(0.25, 0.0).item() == 0.25
    with pytest.raises(ValueError, match="q must lie in"):
        kl_inv(1.5, 0.1)
    with pytest.raises(ValueError, match="c must be >= 0"):
        kl_inv(0.5, -0.1)


def test_mc_risk_bound_matches_brute_force_and_covers():
    g = torch.Generator().manual_seed(1)
    mean = torch.rand(1000, generator=g, dtype=torch.float64)
    mean[:100] = 0.0
    m = torch.randint(1, 2000, (1000,), generator=g)
    dmc = 10 ** (torch.rand(1000, generator=g, dtype=torch.float64) * 3 - 4)
    got = mc_risk_bound(mean, m, dmc)
    assert got[7].item() == mc_risk_bound(float(mean[7]), int(m[7]), float(dmc[7])).item()
    want = brute_kl_inv(mean, torch.log(2 / dmc) / m.double())
    assert (got - want).abs().max().item() < 1e-9
    # Coverage: a true mean p exceeds the bound of m Bernoulli(p) draws at most delta' of the time.
    p, M, d = 0.3, 100, 0.1
    draws = (torch.rand(4000, M, generator=g, dtype=torch.float64) < p).double().mean(1)
    fails = (p > kl_inv(draws, math.log(2 / d) / M)).double().mean().item()
    assert fails <= d / 2 + 0.01  # the two-sided ln(2/d) gives one-sided level d/2


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(2)
    mu_q, mu_p = torch.randn(3, 7, 5, generator=g, dtype=torch.float64), torch.randn(3, 7, 5, generator=g,
                                                                                      dtype=torch.float64)
    s_q = torch.rand(3, 7, 5, generator=g, dtype=torch.float64) + 0.1
    D = torch.distributions
    want = D.kl_divergence(D.Normal(mu_q, s_q), D.Normal(mu_p, 0.3)).flatten(1).sum(1)
    assert torch.allclose(gaussian_kl(mu_q, s_q, mu_p, 0.3), want, rtol=1e-12)
    both = posterior_kl({"a": mu_q, "b": mu_q[:, 0]}, {"a": s_q, "b": s_q[:, 0]},
                        {"a": mu_p, "b": mu_p[:, 0]}, torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64))
    part_b = D.kl_divergence(D.Normal(mu_q[:, 0], s_q[:, 0]), D.Normal(mu_p[:, 0], 0.3)).sum(1)
    assert torch.allclose(both, want + part_b, rtol=1e-12)
    assert torch.all(gaussian_kl(mu_q, s_q, mu_q, s_q) == 0)


def test_certificate_is_the_composition_and_takes_the_best_prior_scale():
    kls = [40.0, 12.0, 30.0]
    cert = certify(0.05, 1000, kls, [0.1, 0.03, 0.01], n=2000, delta=0.025, delta_mc=0.01)
    risk_S = kl_inv(0.05, math.log(2 / 0.01) / 1000).item()
    want = pac_bayes_kl_bound(risk_S, 12.0, 2000, 0.025, grid_size=3).item()
    assert cert.value == pytest.approx(want, abs=1e-15) and cert.prior_scale == 0.03
    assert cert.sample_risk_bound == pytest.approx(risk_S, abs=1e-15)
    assert cert.pac_bayes_term == pytest.approx((12 + math.log(2 * 3 * math.sqrt(2000) / 0.025)) / 2000)
    assert cert.value > cert.sample_risk_bound > cert.mc_mean
    # A single scale pays no union term, so the same KL gives a smaller certificate.
    assert certify(0.05, 1000, [12.0], [0.03], 2000).value < cert.value
    text = "\n".join(cert.lines())
    assert "hat R_m = 0.050000" in text and "K = 3" in text and "0.965" in text


@pytest.mark.parametrize("name", ["f-classic", "f-quad", "f-lambda"])
def test_bound_objectives_upper_bound_the_kl_inverse(name):
    g = torch.Generator().manual_seed(3)
    risk = torch.rand(500, generator=g, dtype=torch.float64) * 0.6
    kl = torch.rand(500, generator=g, dtype=torch.float64) * 3000
    n, delta = 4000, 0.025
    f = bound_objective(name, risk, kl, n, delta)
    exact = pac_bayes_kl_bound(risk, kl, n, delta)
    assert bool(torch.all(f >= exact - 1e-12))
    B = (kl[0] + math.log(2 * math.sqrt(n) / delta)) / n
    hand = {"f-classic": risk[0] + math.sqrt(B / 2),
            "f-quad": (math.sqrt(risk[0] + B / 2) + math.sqrt(B / 2)) ** 2}
    if name in hand:
        assert f[0].item() == pytest.approx(float(hand[name]), rel=1e-12)


def test_f_lambda_uses_its_minimising_lambda():
    risk, kl, n, delta = torch.tensor([0.1]), torch.tensor([200.0]), 1000, 0.025
    B = (200 + math.log(2 * math.sqrt(n) / delta)) / n
    lams = torch.linspace(1e-3, 1.0, 100_001, dtype=torch.float64)
    best = (0.1 / (1 - lams / 2) + B / (lams * (1 - lams / 2))).min().item()
    assert bound_objective("f-lambda", risk.double(), kl.double(), n, delta).item() == pytest.approx(best,
                                                                                                     rel=1e-8)


def test_bounded_cross_entropy_lies_in_unit_interval_and_clamps():
    out = torch.tensor([[[10.0, -10.0], [0.0, 0.0], [-30.0, 30.0]]], dtype=torch.float64)
    y = torch.tensor([[0, 0, 0]])
    ell = bounded_cross_entropy(out, y, 1e-4)
    assert ell[0, 1].item() == pytest.approx(math.log(2) / math.log(1e4))
    assert ell[0, 2].item() == pytest.approx(1.0, abs=1e-15) and 0 < ell[0, 0].item() < 1e-8


@pytest.mark.parametrize("prior_error, gibbs, kl, n, m", [(0.023, 0.028, 1.2, 30000, 30000),
                                                        (0.05, 0.03, 40.0, 2000, 20000),
                                                        (0.0, 0.001, 0.1, 600, 6000)])
def test_holdout_gap_splits_certificate_minus_holdout_bound_exactly(prior_error, gibbs, kl, n, m):
    from resdyn.theory.pacbayes import certify, holdout_gap
    from resdyn.training.pac_bayes import holdout_bound

    delta, delta_mc = 0.025 / 7, 0.01 / 7
    cert = certify(gibbs, m, [kl], [0.03], n, delta, delta_mc)
    k = round(prior_error * n)
    gap = holdout_gap(k / n, gibbs, cert.sample_risk_bound, kl, n, delta)
    assert gap.total == pytest.approx(cert.value - holdout_bound(k, n, delta), abs=1e-12)
    # The draws' bound, the ln(2 sqrt(n)) and the KL only ever add; the noise has the sign of
    # the Gibbs error minus the prior mean's (negative in the second case: the posterior errs less).
    assert gap.monte_carlo > 0 and gap.sqrt_n > 0 and gap.kl > 0
    assert (gap.noise > 0) == (gibbs > k / n)
    # A KL of 0 costs nothing beyond ln(2 sqrt(n)); more draws shrink the Monte-Carlo term.
    assert holdout_gap(k / n, gibbs, cert.sample_risk_bound, 0.0, n, delta).kl == 0.0
    more = certify(gibbs, 100 * m, [kl], [0.03], n, delta, delta_mc)
    assert holdout_gap(k / n, gibbs, more.sample_risk_bound, kl, n, delta).monte_carlo < gap.monte_carlo / 5
