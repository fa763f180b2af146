"""The mean-field ResNet family, its Gram matrices, diagnostics and KL-ball bound."""

import math

import numpy as np
import pytest
import torch

from resdyn.analysis.diagnostics import displacement, fit_linear_rate
from resdyn.analysis.gram import gram_matrices, lambda_min, per_sample_gradients
from resdyn.data.base import Dataset
from resdyn.data.synthetic import two_spirals
from resdyn.experiments.meanfield import gradient_descent_check, lambda_min_settling
from resdyn.models.base import init_params
from resdyn.models.meanfield import MeanFieldResNet
from resdyn.models.registry import build_model
from resdyn.sweeps.measures import MeasureContext, TrackContext, get_measure, get_tracker, tracker_names
from resdyn.theory.meanfield import generalization_bound, phi, rademacher_bound
from resdyn.training import TrainConfig, train


def _data(n=48, n_test=32, seed=1):
    x, y = two_spirals(n + n_test, seed=seed)
    return Dataset("sp", x[:n], y[:n], x[n:], y[n:], 2, mean=x[:n].mean(0), std=x[:n].std(0))


def test_forward_is_the_stated_formula():
    m = MeanFieldResNet(depth=3, width=5, predictor_width=7, alpha=0.7, beta=2.5)
    p = init_params(m, [3], torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64)
    z = x.clone()
    for l in range(3):
        u, w, b = p["u"][0, l], p["w"][0, l], p["b"][0, l]
        z = z + 0.7 / (3 * 5) * torch.tanh(z @ w.T + b) @ u
    f = 2.5 / 7 * torch.tanh(z @ p["v"][0].T + p["c"][0]) @ p["a"][0]
    assert torch.allclose(m.forward(p, x[None])[0, :, 0], f, atol=1e-14)
    assert m.lr_scales() == {"u": 15.0, "w": 15.0, "b": 15.0, "a": 7.0, "v": 7.0, "c": 7.0}
    tied = MeanFieldResNet(depth=3, width=5, predictor_width=7, tied=True)
    assert tied.lr_scales()["u"] == 5.0 and init_params(tied, [0])["u"].shape == (1, 1, 5, 2)
    assert MeanFieldResNet(mean_field_lr=False).lr_scales() == {}
    assert m.encoder_particles(p).shape == (1, 3, 5, 5) and m.predictor_particles(p).shape == (1, 7, 4)
    assert build_model("meanfield", width=5) == MeanFieldResNet(width=5)


def test_options_are_checked_with_names():
    with pytest.raises(ValueError, match="beta"):
        MeanFieldResNet(beta=0.0)
    with pytest.raises(ValueError, match="activation"):
        MeanFieldResNet(activation="sine")
    with pytest.raises(TypeError, match="tied"):
        MeanFieldResNet(tied=1)
    with pytest.raises(ValueError, match="in_dim"):
        MeanFieldResNet().forward(init_params(MeanFieldResNet(), [0]), torch.zeros(1, 3, 5))


def test_initial_particles_are_standard_gaussian():
    m = MeanFieldResNet(depth=4, width=2048, predictor_width=2048)
    p = init_params(m, [0], torch.float64)
    theta = m.encoder_particles(p).reshape(-1, 5)
    assert abs(float(theta.mean())) < 0.01 and abs(float(theta.var()) - 1) < 0.02


def _fd_jacobian(model, params, x, names, h=1e-5):
    out = {}
    for n in names:
        flat = params[n].reshape(-1)
        cols = []
        for j in range(flat.numel()):
            plus = {k: v.clone() for k, v in params.items()}
            minus = {k: v.clone() for k, v in params.items()}
            plus[n].view(-1)[j] += h
            minus[n].view(-1)[j] -= h
            cols.append((model.forward(plus, x[None]) - model.forward(minus, x[None]))[0, :, 0] / (2 * h))
        out[n] = torch.stack(cols, 1)
    return out


def test_gram_matrices_match_finite_differences():
    m = MeanFieldResNet(depth=3, width=4, predictor_width=5, alpha=1.3, beta=2.0)
    p = init_params(m, [5], torch.float64)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    G = gram_matrices(m, p, x)
    J = _fd_jacobian(m, p, x, ("u", "w", "b", "a", "v", "c"))
    s = m.lr_scales()
    G1 = sum(s[n] * J[n] @ J[n].T for n in ("u", "w", "b"))
    G2 = sum(s[n] * J[n] @ J[n].T for n in ("a", "v", "c"))
    err1 = float((G["G1"][0] - G1).abs().max())
    err2 = float((G["G2"][0] - G2).abs().max())
    assert err1 < 1e-6 and err2 < 1e-6, (err1, err2)
    assert float(G2.abs().max()) > 0.1 and float(G1.abs().max()) > 1e-3  # not trivially small
    assert torch.allclose(G["total"], G["G1"] + G["G2"])
    # Per-model inputs and several models: model e only sees its own parameters.
    p2 = init_params(m, [5, 6], torch.float64)
    J2 = per_sample_gradients(m, p2, x, ["a"])
    assert torch.allclose(J2["a"][0], per_sample_gradients(m, p, x, ["a"])["a"][0])


def test_lambda_min_g2_is_zero_once_n_exceeds_the_predictor_parameter_count():
    m = MeanFieldResNet(depth=2, width=8, predictor_width=3)  # K q = 12 predictor parameters
    p = init_params(m, [1], torch.float64)
    x = torch.randn(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    G2 = gram_matrices(m, p, x)["G2"]
    assert abs(float(lambda_min(G2)[0])) < 1e-10 * float(G2.diagonal(dim1=1, dim2=2).max())
    assert torch.linalg.matrix_rank(G2[0]).item() == 12


def test_lambda_min_g2_settles_as_width_grows():
    s = lambda_min_settling()
    means, rel = s["mean"], s["relative_change"]
    err = s["relative_error_to_limit"]
    # Within 10% of the Monte-Carlo limit from M = K = 1024 on, closer than at 64 and 128.
    assert all(e < 0.1 for e in err[4:]) and min(err[:2]) > max(err[4:]), s
    assert rel[-1] < 0.1, s
    assert s["sd"][-1] < 0.5 * s["sd"][0], s
    assert all(m > 0 for m in means)


def test_mean_field_model_trains_through_the_engine_batch_invariantly():
    data = _data()
    m = MeanFieldResNet(depth=3, width=16, predictor_width=16, beta=4.0)
    idx = [torch.arange(32), torch.arange(8, 48)]
    cfg = TrainConfig(steps=30, loss="squared", optimizer="sgd")
    both = train(m, init_params(m, [1, 2], torch.float64), data, idx, lr=0.01, config=cfg, seeds=[1, 2])
    alone = train(m, init_params(m, [2], torch.float64), data, idx[1:], lr=0.01, config=cfg, seeds=[2])
    for k in both.params:
        assert torch.equal(both.params[k][1], alone.params[k][0]), k
    assert torch.all(both.state.loss_history[-1] < both.state.loss_history[0])


def test_gd_at_width_1024_converges_keeps_lambda_min_and_plateaus_the_kl():
    wide = gradient_descent_check(width=1024, steps=800, records=4)
    narrow = gradient_descent_check(width=16, steps=800, records=4)
    assert wide.loss_ratio >= 10, wide.loss_ratio
    assert wide.lambda_ratio > 0.5, wide.lambda_ratio
    assert wide.kl_last_quarter_fraction < 0.1, wide.kl_last_quarter_fraction
    # KL estimates start at ~0 (particles are N(0, I) samples) and grow to a plateau.
    assert abs(wide.kl_enc_knn[0]) < 0.05 and abs(wide.kl_pred_knn[0]) < 0.05
    assert wide.kl_enc_knn[-1] + wide.kl_pred_knn[-1] > 0.2
    # GD follows the linear-convergence bound's rate or faster.
    assert wide.linear_rate > wide.rate_bound > 0
    # Width 16: the predictor Gram starts ~100x smaller, and the k-NN KL of 16-particle clouds
    # is far from 0 at initialisation (no meaningful estimate).
    assert narrow.lambda_min_g2[0] < 0.05 * wide.lambda_min_g2[0]
    assert abs(narrow.kl_enc_knn[0]) + abs(narrow.kl_pred_knn[0]) > 0.1


def test_trackers_and_measures_through_the_sweep_interface():
    data = _data()
    m = MeanFieldResNet(depth=2, width=64, predictor_width=64, beta=2.0)
    p0 = init_params(m, [4, 9], torch.float64)
    idx = [torch.arange(24), torch.arange(40)]
    res = train(m, p0, data, idx, lr=0.05, config=TrainConfig(steps=40, loss="squared", optimizer="sgd"),
                seeds=[4, 9])
    ctx = TrackContext(m, res.params, p0, data, idx, 40, res.state.loss_history, [4, 9], {"max_points": 16})
    for name in tracker_names():
        vals = get_tracker(name)(ctx)
        assert all(v.shape == (2,) and v.dtype == torch.float64 for v in vals.values()), name
    g = get_tracker("gram")(ctx)
    assert torch.all(g["lambda_min_total"] >= g["lambda_min_G2"] - 1e-12)
    mv = get_tracker("displacement")(ctx)
    assert torch.all(mv["w2_enc"] <= mv["move_max_enc"]) and torch.all(mv["w2_enc"] > 0)
    # Independently: w2 is the root-mean-square distance moved by the encoder particles.
    def enc(p):
        return torch.cat([p["u"], p["w"], p["b"].unsqueeze(-1)], -1)

    rms = (enc(res.params) - enc(p0)).norm(dim=-1).square().flatten(1).mean(1).sqrt()
    assert torch.allclose(mv["w2_enc"], rms)
    mctx = MeasureContext(m, res.params, data, idx, TrainConfig(), res.metrics, [4, 9], {})
    # The measure regenerates the initial parameters from the seeds: same displacement.
    assert torch.allclose(get_measure("displacement")(mctx)["w2_pred"], mv["w2_pred"])
    b = get_measure("meanfield_kl_plugin")(mctx)
    # The confidence term is 3 sqrt(log(2/delta) / (2n)) at each model's own n (24 and 40).
    conf = torch.tensor([3 * math.sqrt(math.log(2 / 0.05) / (2 * n)) for n in (24, 40)], dtype=torch.float64)
    assert b["plugin"].shape == (2,) and torch.allclose(b["plugin.confidence"], conf)
    assert torch.allclose(b["plugin"], b["plugin.train_ramp"] + 2 * b["plugin.rademacher"] + conf)
    # r1 is the encoder KL estimate of the trained particles, clipped at 0.
    kl = get_tracker("kl")(ctx)
    assert torch.allclose(b["plugin.r1"], kl["kl_enc_knn"].clamp_min(0.0))


def test_displacement_and_linear_rate_on_known_values():
    m = MeanFieldResNet(depth=2, width=3, predictor_width=4)
    p = init_params(m, [0], torch.float64)
    q = {k: v.clone() for k, v in p.items()}
    q["u"] = q["u"] + torch.tensor([3.0, 4.0], dtype=torch.float64)  # every encoder particle moves 5
    d = displacement(m, q, p)
    assert torch.allclose(d["w2_enc"], torch.tensor([5.0], dtype=torch.float64))
    assert float(d["w2_pred"][0]) == 0.0
    t = torch.arange(50, dtype=torch.float64)
    losses = torch.stack([2.0 * torch.exp(-0.03 * t), 0.5 * torch.exp(-0.2 * t)], 1)
    assert torch.allclose(fit_linear_rate(losses), torch.tensor([0.03, 0.2], dtype=torch.float64))


def test_rademacher_bound_formula_and_a_lower_bound_it_must_exceed():
    assert phi(0.5) == pytest.approx(2 * math.sqrt(0.5)) == pytest.approx((2 * 0.5 + 1) / math.sqrt(2))
    r = rademacher_bound(100, 0.0, 0.08, 1.0, 3.0)
    assert r["predictor"] == pytest.approx(3.0 * 2 * math.sqrt(0.08) / 10) and r["encoder"] == 0.0
    r = rademacher_bound(100, 0.02, 2.0, 0.5, 3.0)
    assert r["encoder"] == pytest.approx(0.5 * 3.0 * math.sqrt(0.04) * 5 / math.sqrt(2))
    with pytest.raises(ValueError, match="n must"):
        rademacher_bound(0, 0.1, 0.1, 1.0, 1.0)
    # The assembled bound: ramp + 2 Rad + 3 sqrt(log(2 / delta) / (2n)); here each term of Rad is
    # 3 phi(2) / 10 = 0.5 * 3 * sqrt(0.04) phi(2) = 1.5 / sqrt 2 (phi(2) = 5 / sqrt 2).
    g = generalization_bound(100, 0.1, 0.02, 2.0, 0.5, 3.0)
    assert g["bound"] == pytest.approx(0.1 + 2 * 3 / math.sqrt(2) + 3 * math.sqrt(math.log(40) / 200),
                                       rel=1e-12)
    with pytest.raises(ValueError, match="delta"):
        generalization_bound(10, 0.0, 0.1, 0.1, 1.0, 1.0, delta=1.5)
    # Lower bound on Rad_n of the predictor class (r1 = 0): nu = N(m, I) with m = (m_a, 0, 0, m_c),
    # KL = |m|^2 / 2 <= r2, gives f(x) = beta m_a E tanh(m_c + sqrt(|x|^2 + 1) Z).
    n, beta, r2 = 40, 2.0, 0.3
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 2))
    z, w = np.polynomial.hermite_e.hermegauss(60)
    w = w / w.sum()
    scale = np.sqrt((x**2).sum(1) + 1)
    angles = np.linspace(0, 2 * math.pi, 721)
    rad = math.sqrt(2 * r2)
    feats = np.stack([rad * math.cos(t) * (np.tanh(rad * math.sin(t) + scale[:, None] * z) @ w)
                      for t in angles])  # (angles, n)
    xi = rng.choice([-1.0, 1.0], size=(4000, n))
    lower = float(np.mean(np.max(xi @ feats.T, axis=1))) * beta / n
    upper = rademacher_bound(n, 0.0, r2, 1.0, beta)["rademacher"]
    assert 0 < lower <= upper < 20 * lower, (lower, upper)


def test_quick_reproduction_writes_figures_and_a_falling_error(tmp_path):
    import json

    from resdyn.experiments.meanfield import analyze
    from resdyn.sweeps import Store, load_spec, run_sweep
    from resdyn.sweeps.spec import spec_path

    run_sweep(load_spec(spec_path("mean-field-quick")), tmp_path / "mf.sqlite")
    with Store(tmp_path / "mf.sqlite", create=False) as st:
        out = analyze(st.records(series=True), tmp_path, "mean-field-quick")
    assert set(out.figures) == {"test_error_vs_n", "training_curves"}
    assert all(p.exists() and p.stat().st_size > 1000 for p in out.figures.values())
    json.dumps(out.data)
    fit = out.tables["fit"][0]
    assert fit["slope"] < 0 and fit["ci95_low"] < fit["slope"] < fit["ci95_high"]
    errs = [r["mean_test_error"] for r in out.tables["error_by_n"]]
    assert errs[-1] < errs[0]
    assert len(out.data["trajectories"]["step"]) == 4  # steps 0, 100, 200, 300
    # "error falls as a power of n": held exactly when the one-sided test across seeds rejects b >= 0.
    v = out.claims[0].values["verdict"]
    assert out.claims[0].held == (v["p_for"] is not None and v["p_for"] < v["alpha"])
    assert out.claims[0].verdict != "not held"  # every seed's error falls
