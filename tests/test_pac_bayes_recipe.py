"""The certificate recipe's pieces (resdyn.training.pac_bayes): the split, normalisation from the
prior part only, the hold-out bound against the binomial tail, the whitened posterior's draws,
and posterior training with the engine."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from resdyn.data import load, subsample
from resdyn.models.base import init_params
from resdyn.models.resnet import ResNet
from resdyn.theory.depth_prior import BrownianPrior, WhitenedGaussian
from resdyn.training.pac_bayes import (
    gibbs_risks,
    holdout_bound,
    network_errors,
    normalised_on,
    split_sample,
    train_posterior,
)


def test_split_is_disjoint_covering_and_seeded():
    idx = torch.arange(100, 200)
    p, b = split_sample(idx, 3, 0.4)
    assert len(p) == 40 and len(b) == 60
    assert sorted(torch.cat([p, b]).tolist()) == idx.tolist()
    assert torch.equal(split_sample(idx, 3, 0.4)[0], p)
    assert not torch.equal(split_sample(idx, 4, 0.4)[0], p)
    with pytest.raises(ValueError, match="prior_fraction"):
        split_sample(idx, 0, 1.0)


def test_normalisation_reads_the_prior_rows_only():
    data = load("digits")
    full = normalised_on(data, torch.arange(len(data.y)))
    torch.testing.assert_close(full.mean, data.mean, rtol=0, atol=1e-12)  # the pool's own statistics
    torch.testing.assert_close(full.std, data.std, rtol=0, atol=1e-12)
    rows = torch.arange(0, 300)
    part = normalised_on(data, rows)
    x = data.x[rows].double() / 255.0
    assert float(part.mean) == pytest.approx(float(x.mean()), abs=1e-12)
    assert float(part.std) == pytest.approx(float(x.std(correction=0)), abs=1e-12)
    # Changing a row outside `rows` changes nothing.
    other = data.x.clone()
    other[500:] = 255
    import dataclasses

    assert torch.equal(normalised_on(dataclasses.replace(data, x=other), rows).mean, part.mean)


@pytest.mark.parametrize("k, n, delta", [(0, 100, 0.05), (10, 1000, 0.025), (37, 2000, 0.01),
                                         (500, 1000, 0.1)])
def test_holdout_bound_is_a_binomial_upper_confidence_limit(k, n, delta):
    p = holdout_bound(k, n, delta)
    # Valid: at p the chance of k or fewer errors is at most delta (the Chernoff-kl form is looser
    # than the exact Clopper-Pearson limit, never tighter).
    assert stats.binom.cdf(k, n, p) <= delta
    assert p >= stats.beta.ppf(1 - delta, k + 1, n - k) - 1e-12
    assert p < stats.beta.ppf(1 - delta / 20, k + 1, n - k)  # and not absurdly loose


def test_holdout_bound_refuses_bad_counts():
    with pytest.raises(ValueError, match="errors"):
        holdout_bound(5, 4, 0.05)
    with pytest.raises(ValueError, match="delta"):
        holdout_bound(1, 4, 1.5)


def _spirals_setup(depth: int = 4):
    data = load("two_spirals")
    model = ResNet(in_dim=2, out_dim=2, width=8, depth=depth, activation="tanh")
    params = init_params(model, [0, 1], torch.float64)
    return data, model, params


def test_gibbs_error_with_vanishing_noise_is_the_network_error():
    data, model, params = _spirals_setup()
    idx = [subsample(data, 200, 0), subsample(data, 150, 1)]
    prior = WhitenedGaussian(params, BrownianPrior(1e-12, 1e-12), 1e-12)
    err, _ = gibbs_risks(model, prior, prior.zeros(), data, idx, [0, 1], 2, "t")
    det = network_errors(model, params, data, idx)
    assert err.tolist() == [det[0].item() / 200, det[1].item() / 150]


def test_gibbs_error_is_one_draw_per_example_from_the_posterior():
    # One example repeated: the 0-1 losses of its 4000 draws are Bernoulli(q) with q the
    # probability that a draw of Q misclassifies it; estimate q independently with prior.draw.
    data, model, params = _spirals_setup()
    one = {k: v[:1] for k, v in params.items()}
    prior = WhitenedGaussian(one, BrownianPrior(0.8, 0.8), 0.8)
    u = {k: torch.full_like(v, 0.1) for k, v in prior.zeros().items()}
    idx = torch.full((4000,), 7)
    err, _ = gibbs_risks(model, prior, u, data, [idx], [5], 1, "a")
    x = data.prepare(data.x[7:8], torch.float64, "cpu")
    wrong = 0
    for j in range(2000):
        w = prior.draw(u, [j], "b")
        wrong += int(model.forward(w, x.unsqueeze(0))[0, 0].argmax() != data.y[7])
    q = wrong / 2000
    se = math.sqrt(q * (1 - q) * (1 / 4000 + 1 / 2000))
    assert 0.02 < q < 0.98  # the noise matters for this example
    assert abs(float(err[0]) - q) < 4 * se


def test_posterior_training_lowers_the_bound_objective_and_moves_from_the_prior():
    data = load("breast_cancer")  # nearly linearly separable: an untrained net learns it in steps
    model = ResNet(in_dim=data.in_dim, out_dim=2, width=8, depth=4, activation="tanh")
    params = init_params(model, [0, 1], torch.float64)
    idx = [subsample(data, 256, 0), subsample(data, 256, 1)]
    # A large nominal n makes KL cheap, so the data term drives u (with n = 128 and s = 0.05 the KL
    # term acts as a weight decay of about 10 in weight units and u barely moves). SGD in whitened
    # units moves theta by about lr s^2 grad: the recipe's rate is 0.1 / s^2.
    prior = WhitenedGaussian(params, BrownianPrior(0.2, 0.2), 0.2)
    u, hist = train_posterior(model, prior, data, idx, n_bound=[20000, 20000], lr=0.1 / 0.2**2,
                              steps=150, batch_size=64, seeds=[0, 1])
    assert hist.shape == (150, 2)
    assert (hist[-20:].mean(0) < 0.5 * hist[:20].mean(0)).all()  # about 0.077 -> 0.020 here
    assert (prior.kl(u) > 0).all()
    # Model 1 trained alone gives the same posterior (the engine keeps models apart).
    one = WhitenedGaussian({k: v[1:] for k, v in params.items()}, BrownianPrior(0.2, 0.2), 0.2)
    u1, _ = train_posterior(model, one, data, idx[1:], n_bound=[20000], lr=0.1 / 0.2**2, steps=150,
                            batch_size=64, seeds=[1])
    for k in u:
        torch.testing.assert_close(u1[k][0], u[k][1], rtol=0, atol=0)


def test_averaged_posterior_is_the_mean_of_the_last_iterates():
    """average = 0.5 returns the mean of u_t over the last half of the steps: rebuilt here from
    the iterates of a last-iterate run stopped at every step (the engine is deterministic), and
    different from the last iterate."""
    data = load("breast_cancer")
    model = ResNet(in_dim=data.in_dim, out_dim=2, width=4, depth=3, activation="tanh")
    params = init_params(model, [0], torch.float64)
    idx = [subsample(data, 128, 0)]
    prior = WhitenedGaussian(params, BrownianPrior(0.2, 0.2), 0.2)
    kw = dict(n_bound=[20000], lr=0.1 / 0.2**2, batch_size=32, seeds=[0])
    steps = 8
    avg, hist = train_posterior(model, prior, data, idx, steps=steps, average=0.5, **kw)
    last, hist_last = train_posterior(model, prior, data, idx, steps=steps, **kw)
    torch.testing.assert_close(hist, hist_last, rtol=0, atol=0)  # the same trajectory
    iterates = [train_posterior(model, prior, data, idx, steps=t, **kw)[0] for t in range(5, 9)]
    for k in avg:
        expect = sum(it[k] for it in iterates) / 4
        torch.testing.assert_close(avg[k], expect, rtol=1e-12, atol=1e-12)
    assert any(not torch.equal(avg[k], last[k]) for k in avg)
    with pytest.raises(ValueError, match=r"average must lie in \[0, 1\)"):
        train_posterior(model, prior, data, idx, steps=2, average=1.0, **kw)


def test_certificate_average_is_left_out_of_a_cell_config_at_its_default():
    """A field added after stores existed: stored cells keep their ids; set, it changes the id."""
    import dataclasses

    from resdyn.sweeps.cells import Cell, DataConfig, TrainingConfig
    from resdyn.training.certify import CertificateConfig
    from resdyn.training.engine import TrainConfig

    model = ResNet(in_dim=2, out_dim=2, width=4, depth=2)
    base = Cell(model, DataConfig("two_spirals"), TrainingConfig(TrainConfig(steps=5), 1e-2), 100, 0,
                "float32", certificate=CertificateConfig())
    assert "average" not in base.config["certificate"]
    avg = dataclasses.replace(base, certificate=CertificateConfig(average=0.5))
    assert avg.config["certificate"]["average"] == 0.5
    assert avg.cell_id != base.cell_id


def test_certificate_config_declares_its_constraints():
    from resdyn.training.certify import CertificateConfig

    with pytest.raises(ValueError, match="prior must be one of 'brownian', 'iid'"):
        CertificateConfig(prior="gaussian")
    with pytest.raises(ValueError, match="scales"):
        CertificateConfig(scales=())
    with pytest.raises(ValueError, match=r"scales\[1\]"):
        CertificateConfig(scales=(0.1, -0.03))
    with pytest.raises(ValueError, match="delta \\+ delta_mc must be < 1"):
        CertificateConfig(delta=0.6, delta_mc=0.5)


def test_certify_sample_composes_its_terms():
    from resdyn.theory.pacbayes import certify
    from resdyn.training.certify import CertificateConfig, certify_sample
    from resdyn.training.engine import TrainConfig

    data = load("breast_cancer")
    model = ResNet(in_dim=data.in_dim, out_dim=2, width=8, depth=3, activation="tanh")
    sample = subsample(data, 200, 0)
    cfg = CertificateConfig(posterior_steps=30, rounds=3, test_rounds=1, batch_size=64)
    out = certify_sample(model, init_params(model, [0], torch.float32), data, sample, 0, 1e-2,
                         TrainConfig(steps=60, batch_size=64), cfg)
    r = out.numbers
    assert r["n"] == 100 and r["draws"] == 300 and r["scale"] in cfg.scales
    again = certify(r["gibbs_bound"], r["draws"], [r["kl"]], [r["scale"]], r["n"], cfg.delta, cfg.delta_mc)
    assert r["certificate"] == again.value and r["kl"] == pytest.approx(float(0.5 * sum(
        v.double().square().sum() for v in out.posterior.values())), rel=1e-6)
    assert r["gibbs_bound"] <= r["sample_risk_bound"] <= r["certificate"] <= 1
    k = round(r["prior_mean_bound_error"] * 100)
    assert r["holdout"] == holdout_bound(k, 100, cfg.delta)
    assert out.prior_history.shape == (60, 1) and out.posterior_history.shape == (30, 1)


def test_the_scale_rule_takes_the_largest_scale_within_the_slack():
    """Step 4: the largest s whose Gibbs error on S_p is within scale_slack of the prior mean's
    error there, else the last. At s = 100 the draws are far from the mean (error near 1/2), at
    1e-6 they are the mean's own predictions."""
    from resdyn.training.certify import CertificateConfig, _choose_scale

    data = load("breast_cancer")
    model = ResNet(in_dim=data.in_dim, out_dim=2, width=8, depth=3, activation="tanh")
    mean = init_params(model, [0], torch.float32)
    prior_idx, _ = split_sample(subsample(data, 200, 0), 0, 0.5)
    data = normalised_on(data, prior_idx)

    def rule(slack: float, scales: tuple[float, ...]) -> float:
        cfg = CertificateConfig(scales=scales, scale_slack=slack)
        return _choose_scale(model, cfg, mean, data, prior_idx, 0)

    assert rule(0.0, (100.0, 1e-6, 1e-7)) == 1e-6  # 100 is too noisy; 1e-6 is the largest within
    assert rule(1.0, (100.0, 1e-6, 1e-7)) == 100.0  # every Gibbs error is within a slack of 1
    assert rule(0.0, (100.0, 50.0, 1e-7)) == 1e-7  # none within: the last, untested
