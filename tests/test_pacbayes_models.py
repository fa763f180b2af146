"""Knot parametrisation and Gaussian posteriors: depth-free parameters, a KL that does not see
L, reparametrised sampling that keeps models apart."""

import dataclasses

import pytest
import torch

from resdyn.models import ResNet, init_params
from resdyn.models.conv_resnet import ConvResNet
from resdyn.models.knot_resnet import DepthStack, KnotResNet, at_depth
from resdyn.models.ode_resnet import ODEResNet
from resdyn.models.paths import knot_layer_weights
from resdyn.models.stochastic import (
    evaluation_draw,
    init_posterior,
    posterior_parts,
    sample,
    softplus_inv,
)
from resdyn.theory.pacbayes import posterior_kl
from resdyn.training.losses import correct, per_sample_loss

D64 = torch.float64


def _x(n=5, d=2, seed=0):
    return torch.randn(1, n, d, generator=torch.Generator().manual_seed(seed), dtype=D64)


def test_constant_knots_with_P_equal_L_is_the_plain_resnet(monkeypatch):
    net = ResNet(in_dim=2, out_dim=2, width=6, depth=8)
    knot = KnotResNet(net, knots=8, interpolation="constant")
    p = init_params(knot, [3], D64)
    # The plain ResNet runs the native kernel on the CPU (its own rounding); its torch path is
    # the knot network's arithmetic op for op.
    assert torch.allclose(knot.forward(p, _x()), net.forward(p, _x()), rtol=0, atol=1e-13)
    monkeypatch.setenv("RESDYN_NATIVE", "0")
    assert torch.equal(knot.forward(p, _x()), net.forward(p, _x()))


def test_linear_knots_interpolate_and_hit_every_knot():
    left, right, s = knot_layer_weights(4, 16, "linear")
    assert torch.equal(right, left + 1)
    assert left.tolist()[:5] == [0, 0, 0, 0, 1] and s.tolist()[:5] == [0.0, 0.25, 0.5, 0.75, 0.0]
    knot = KnotResNet(ResNet(in_dim=2, width=4, depth=16), knots=4)
    p = init_params(knot, [0, 1], D64)
    W = knot.layer_params(p)["W"]
    assert W.shape[:2] == (2, 16)
    # The forward forms each layer on the fly; it is the inner network on the expanded layers.
    x = _x(7, seed=3).expand(2, 7, 2)
    assert torch.allclose(knot.forward(p, x), knot.inner.forward(knot.layer_params(p), x), rtol=0,
                          atol=1e-13)
    for j in range(4):  # layer 4 j sits on knot j
        assert torch.equal(W[:, 4 * j], p["W"][:, j])
    assert torch.allclose(W[:, 2], 0.5 * (p["W"][:, 0] + p["W"][:, 1]), rtol=0, atol=1e-15)


def test_knot_parameters_and_posterior_kl_do_not_depend_on_depth():
    shallow = KnotResNet(ResNet(in_dim=2, width=8, depth=4), knots=4)
    deep = shallow.with_depth(256)
    p4, p256 = init_params(shallow, [5, 6], D64), init_params(deep, [5, 6], D64)
    assert p4.keys() == p256.keys() and all(torch.equal(p4[k], p256[k]) for k in p4)
    # A posterior moved away from the prior (as training would) and its KL at both depths.
    g = torch.Generator().manual_seed(1)
    post = init_posterior({k: v + 0.1 * torch.randn(v.shape, generator=g, dtype=D64)
                           for k, v in p4.items()}, 0.02)
    mu, sigma = posterior_parts(post)
    kl4 = posterior_kl(mu, sigma, p4, 0.05)
    kl256 = posterior_kl(mu, sigma, p256, 0.05)
    assert torch.all(kl4 > 1) and torch.allclose(kl4, kl256, rtol=1e-9, atol=0)
    # The contrast: one parameter set per layer (a plain ResNet) pays KL for every layer.
    plain = {L: init_params(ResNet(in_dim=2, width=8, depth=L), [5], D64) for L in (4, 256)}
    kls = {}
    for L, p in plain.items():
        q = init_posterior({k: v + 0.1 * torch.randn(v.shape, generator=g, dtype=D64)
                            for k, v in p.items()}, 0.02)
        m, s = posterior_parts(q)
        kls[L] = posterior_kl(m, s, p, 0.05).item()
    assert kls[256] > 20 * kls[4]


def test_deep_knot_networks_converge_as_L_grows():
    knot = KnotResNet(ResNet(in_dim=2, width=8, depth=16, horizon=1.0), knots=4)
    p = init_params(knot, [2], D64)
    out = {L: knot.with_depth(L).forward(p, _x(20)) for L in (16, 64, 128, 512)}
    gaps = [(out[a] - out[512]).abs().max().item() for a in (16, 64, 128)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-2


def test_conv_and_continuous_time_models_take_the_knot_parametrisation():
    conv = KnotResNet(ConvResNet(in_channels=1, out_dim=3, channels=2, depth=8), knots=2)
    p = init_params(conv, [0], D64)
    assert p["W"].shape[1] == 3
    x = torch.randn(1, 4, 1, 6, 6, generator=torch.Generator().manual_seed(0), dtype=D64)
    assert conv.forward(p, x).shape == (1, 4, 3)
    assert torch.equal(init_params(conv.with_depth(64), [0], D64)["W"], p["W"])
    ode = ODEResNet(in_dim=2, width=6, knots=4, interpolation="linear", method="rk4")
    q = init_params(ode, [1], D64)
    a, b = at_depth(ode, 8), at_depth(ode, 256)
    assert (a.steps_per_knot, b.steps_per_knot) == (2, 64)
    ref = b.forward(q, _x())
    gap8 = (a.forward(q, _x()) - ref).abs().max().item()
    gap64 = (at_depth(ode, 64).forward(q, _x()) - ref).abs().max().item()
    assert gap64 < gap8 < 1e-3  # rk4 steps refine one flow
    with pytest.raises(ValueError, match="multiple of the 4 knots"):
        at_depth(ode, 6)
    with pytest.raises(ValueError, match="untied"):
        KnotResNet(ResNet(tied=True))


def test_sampling_is_reparametrised_and_per_model():
    net = KnotResNet(ResNet(in_dim=2, width=4, depth=4), knots=2)
    p = init_params(net, [0, 1, 2], D64)
    post = init_posterior(p, 0.3)
    assert softplus_inv(0.3) == pytest.approx(torch.log(torch.expm1(torch.tensor(0.3, dtype=D64))).item())
    group = sample(post, 7, [10, 11, 12])
    alone = sample({k: v[1:2] for k, v in post.items()}, 7, [11])
    assert all(torch.equal(group[k][1:2], alone[k]) for k in group)
    assert not torch.equal(group["W"][0], sample(post, 8, [10, 11, 12])["W"][0])
    # Many draws: mean mu and standard deviation sigma.
    draws = torch.stack([evaluation_draw({k: v[:1] for k, v in post.items()}, [4], j)["W"][0]
                         for j in range(4000)])
    assert (draws.mean(0) - p["W"][0]).abs().max().item() < 0.03
    assert (draws.std(0) - 0.3).abs().max().item() < 0.03
    # Gradients reach mu and rho through the draw.
    leaves = {k: v.clone().requires_grad_(True) for k, v in post.items()}
    sample(leaves, 0, [0, 1, 2])["W"].sum().backward()
    assert leaves["mu.W"].grad.abs().min().item() == 1.0 and leaves["rho.W"].grad.abs().sum() > 0


def test_with_depth_keeps_every_other_option():
    knot = KnotResNet(ResNet(in_dim=3, width=5, depth=4, activation="relu"), knots=2)
    assert dataclasses.replace(knot.with_depth(64).inner, depth=4) == knot.inner


def test_depth_stack_heads_are_the_networks_of_each_depth_and_the_loss_is_their_mean():
    knot = KnotResNet(ResNet(in_dim=2, out_dim=3, width=5, depth=4, horizon=2.0), knots=4)
    stack = DepthStack(knot, (4, 64))
    p = init_params(stack, [0, 1], D64)
    x = _x(6, seed=2).expand(2, 6, 2)
    out = stack.forward(p, x)
    assert out.shape == (2, 6, 2, 3)
    for h, L in enumerate((4, 64)):
        assert torch.equal(out[:, :, h], at_depth(knot, L).forward(p, x))
    # The coarse and the fine network differ, so the mean is not either one.
    assert not torch.allclose(out[:, :, 0], out[:, :, 1], atol=1e-3)
    y = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0]])
    for loss in ("cross_entropy", "squared"):
        per_head = [per_sample_loss(out[:, :, h], y, loss) for h in range(2)]
        assert torch.equal(per_sample_loss(out, y, loss), torch.stack(per_head, -1).mean(-1))
    assert torch.equal(correct(out, y), (correct(out[:, :, 0], y) + correct(out[:, :, 1], y)) / 2)
    with pytest.raises(ValueError, match="do not fit labels"):
        per_sample_loss(out[..., None], y, "cross_entropy")
    with pytest.raises(ValueError, match="multiple of the 4 knots"):
        DepthStack(ODEResNet(in_dim=2, out_dim=3, width=4, knots=4), (6,))
