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


def _prior_and_mean(depth: int, kind: str = "brownian", s: float = 0.1):
    from resdyn.models.base import init_params
    from resdyn.models.resnet import ResNet
    from resdyn.training.certify import layer_names, make_prior

    model = ResNet(in_dim=2, out_dim=2, width=3, depth=depth, activation="tanh")
    mean = init_params(model, [0], torch.float64)
    return model, mean, make_prior(kind, mean, s, model.horizon, layer_names(model))


def test_kl_in_depth_of_a_deepened_deviation_pays_nothing_for_the_finer_layers():
    """A posterior mean deepened from L = 4 (its deviation linear between the coarse layer times,
    held past the last) has no excess at L = 16 under the Brownian prior, and its coarse part is
    the L = 4 posterior's layer KL; under the i.i.d. prior the finer layers cost more."""
    coarse_model, mean4, prior4 = _prior_and_mean(4)
    g = torch.Generator().manual_seed(1)
    u4 = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in mean4.items()}
    post4 = prior4.params(u4)
    _, mean16 = coarse_model.deepened(mean4, 16)
    _, post16 = coarse_model.deepened(post4, 16)
    _, _, prior16 = _prior_and_mean(16)
    prior16 = type(prior16)(mean16, prior16.layers, prior16.io_scale, prior16.layer_names)
    delta = {k: post16[k] - mean16[k] for k in mean16}
    u16 = {k: (prior16.layers.whiten(delta[k]) if k in prior16.layer_names else delta[k] / prior16.io_scale)
           for k in delta}
    split = prior16.kl_in_depth(u16, 4)
    layers4 = prior4.kl_in_depth(u4, 4)
    assert split.excess.abs().max() < 1e-9 * split.layers.max()
    assert torch.allclose(split.coarse, layers4.layers, rtol=1e-10)
    assert torch.allclose(split.total, prior16.kl(u16), rtol=1e-12)
    assert torch.allclose(split.io, layers4.io, rtol=1e-10)  # embedding and readout are shared
    # The same deviation under the i.i.d. prior: 16 layers against 4 read at the coarse times.
    _, _, iid16 = _prior_and_mean(16, "iid")
    iid16 = type(iid16)(mean16, iid16.layers, iid16.io_scale, iid16.layer_names)
    w16 = {k: delta[k] / (iid16.layers if k in iid16.layer_names else iid16.io_scale) for k in delta}
    iid_split = iid16.kl_in_depth(w16, 4)
    d4 = {k: post4[k] - mean4[k] for k in iid16.layer_names}
    by_hand = 0.0
    for d in d4.values():  # layer j = 4p + i of the fine path: (1 - i/4) d_p + (i/4) d_{p+1}, held at d_3
        for p in range(4):
            for i in range(4):
                x = d[:, 3] if p == 3 else (1 - i / 4) * d[:, p] + (i / 4) * d[:, p + 1]
                by_hand += float(x.square().sum()) / (2 * iid16.layers**2)
    assert math.isclose(float(iid_split.layers), by_hand, rel_tol=1e-10)
    coarse_by_hand = sum(float(d.square().sum()) for d in d4.values()) / (2 * iid16.layers**2)
    assert math.isclose(float(iid_split.coarse), coarse_by_hand, rel_tol=1e-10)
    assert float(iid_split.layers / iid_split.coarse) > 3  # about r = 4 times: the finer layers pay


def _one_layer_prior(prior, L: int):
    from resdyn.theory.depth_prior import WhitenedGaussian

    return WhitenedGaussian({"W": torch.zeros(1, L, 2, dtype=torch.float64)}, prior, 1.0, ("W",))


def test_kl_in_depth_constant_and_rough_paths_by_hand():
    """A constant deviation c: Brownian excess 0, coarse = start = |c|^2 / (2 s0^2); i.i.d. layers
    = r x coarse exactly. Increments alternating -a, +a from layer 1 on: the path sits at 0 at
    every even layer, so its reading at L_c = 4 costs nothing, and the excess is the whole
    (L - 1) |a|^2 / (2 sigma^2 h) per entry."""
    L, Lc = 16, 4
    prior = BrownianPrior(start=0.3, rate=0.7, horizon=1.0)
    model = _one_layer_prior(prior, L)
    c = torch.full((1, L, 2), 0.5, dtype=torch.float64)
    split = model.kl_in_depth({"W": prior.whiten(c)}, Lc)
    assert math.isclose(float(split.layers), 2 * 0.25 / (2 * 0.09), rel_tol=1e-12)
    assert abs(float(split.excess)) < 1e-12 and math.isclose(float(split.start), float(split.layers))
    iid = _one_layer_prior(0.2, L).kl_in_depth({"W": c / 0.2}, Lc)
    assert math.isclose(float(iid.layers / iid.coarse), 4.0, rel_tol=1e-12)
    a = 0.1
    inc = torch.tensor([a, -a] * (L // 2), dtype=torch.float64)
    inc[0] = 0.0  # delta_0 = 0: no starting-point cost
    path = torch.cumsum(inc, 0)[None, :, None].expand(1, L, 2)
    rough = model.kl_in_depth({"W": prior.whiten(path)}, Lc)
    h = 1.0 / L
    assert abs(float(rough.coarse)) < 1e-12 and abs(float(rough.start)) < 1e-12
    assert math.isclose(float(rough.excess), 2 * (L - 1) * a**2 / (2 * 0.49 * h), rel_tol=1e-12)
    # Read at L_c = 8 instead (the odd layers dropped too): still 0, the same excess.
    assert math.isclose(float(model.kl_in_depth({"W": prior.whiten(path)}, 8).excess),
                        float(rough.excess), rel_tol=1e-12)
    # Moved to -a at the coarse layers 4, 8, 12: the reading pays one coarse increment -a, at the
    # coarse step sigma^2 r h, per entry.
    moved = path.clone()
    moved[:, 4::4] = -a
    coarse = float(model.kl_in_depth({"W": prior.whiten(moved)}, Lc).coarse)
    assert math.isclose(coarse, 2 * a**2 / (2 * 0.49 * 4 * h), rel_tol=1e-12)


def test_read_at_refuses_a_depth_that_does_not_divide():
    from resdyn.theory.depth_prior import read_at
    with pytest.raises(ValueError, match="dividing 16"):
        read_at(torch.zeros(1, 16, 2), 5)
    with pytest.raises(ValueError, match="dividing 16"):
        read_at(torch.zeros(1, 16, 2), 0)
