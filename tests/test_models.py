import numpy as np
import pytest
import torch
from torchdiffeq import odeint

from resdyn.models import ConvResNet, ODEResNet, ResNet, init_params
from resdyn.models.activations import get_activation
from resdyn.models.base import generator_for
from resdyn.models.blocks import residual_map
from resdyn.models.paths import SmoothPath

F64 = torch.float64


@pytest.mark.parametrize("block", ["two_layer", "one_layer"])
@pytest.mark.parametrize("L", [1, 5, 16])
def test_discrete_resnet_equals_euler_flow_with_piecewise_constant_parameters(block, L):
    net = ResNet(in_dim=3, out_dim=4, width=6, depth=L, horizon=1.7, block=block)
    ode = ODEResNet(in_dim=3, out_dim=4, width=6, knots=L, horizon=1.7, block=block,
                    method="euler")
    params = init_params(net, [0, 1, 2], F64)
    x = torch.randn(3, 11, 3, dtype=F64)
    assert torch.allclose(net.forward(params, x), ode.forward(params, x), rtol=0, atol=1e-12)


def test_tied_resnet_is_euler_of_an_autonomous_ode():
    net = ResNet(in_dim=2, out_dim=2, width=5, depth=12, tied=True)
    params = init_params(net, [3], F64)
    assert params["W"].shape == (1, 1, 5, 5)
    # Autonomous: repeating the one layer L times in the ODE model gives the same output.
    ode = ODEResNet(in_dim=2, out_dim=2, width=5, knots=12, method="euler")
    rep = {k: (v.expand(-1, 12, *v.shape[2:]) if k in ("W", "b", "V") else v)
           for k, v in params.items()}
    x = torch.randn(1, 7, 2, dtype=F64)
    assert torch.allclose(net.forward(params, x), ode.forward(rep, x), atol=1e-12, rtol=0)


def test_discrete_output_converges_at_first_order_to_the_smooth_path_ode():
    """theta_k = theta(k h) from one fixed smooth path; dopri5 at 1e-12 is the reference."""
    m, p, d, T = 4, 6, 2, 1.0
    g = generator_for(7, "test-path")
    paths = {
        "W": SmoothPath.sample(g, (p, m), 1.5 / m**0.5, T),
        "b": SmoothPath.sample(g, (p,), 0.5, T),
        "V": SmoothPath.sample(g, (m, p), 1.5 / p**0.5, T),
    }
    io = {"A": torch.randn(1, m, d, generator=g, dtype=F64), "c": torch.zeros(1, m, dtype=F64),
          "R": torch.randn(1, 2, m, generator=g, dtype=F64), "r": torch.zeros(1, 2, dtype=F64)}
    x = torch.randn(1, 9, d, generator=g, dtype=F64)
    act = get_activation("tanh")
    z0 = torch.bmm(x, io["A"].transpose(1, 2))

    def field(t, z):
        theta = {k: path(t.reshape(1))[0].unsqueeze(0) for k, path in paths.items()}
        return residual_map(theta, z, act)

    zT = odeint(field, z0, torch.tensor([0.0, T], dtype=F64), method="dopri5",
                rtol=1e-12, atol=1e-12)[-1]
    ref = torch.bmm(zT, io["R"].transpose(1, 2))
    Ls = [32, 64, 128, 256, 512]
    errs = []
    for L in Ls:
        net = ResNet(in_dim=d, out_dim=2, width=m, hidden=p, depth=L, horizon=T)
        t = net.layer_times()
        params = {**io, **{k: path(t).unsqueeze(0) for k, path in paths.items()}}
        errs.append((net.forward(params, x) - ref).abs().max().item())
    slope = np.polyfit(np.log(Ls), np.log(errs), 1)[0]
    assert -1.1 <= slope <= -0.9, (slope, errs)


def test_smooth_init_is_one_path_for_every_depth_iid_is_not():
    a = ResNet(depth=8).init(generator_for(0, "init"), F64, torch.device("cpu"))
    b = ResNet(depth=16).init(generator_for(0, "init"), F64, torch.device("cpu"))
    # theta(t_k) for L = 8 are the even layers of L = 16.
    assert torch.allclose(a["W"], b["W"][::2], atol=1e-15)
    c = ResNet(depth=8, weight_init="iid").init(generator_for(0, "init"), F64,
                                                torch.device("cpu"))
    d = ResNet(depth=16, weight_init="iid").init(generator_for(0, "init"), F64,
                                                 torch.device("cpu"))
    assert not torch.allclose(c["W"][1], d["W"][2])


def test_iid_residual_part_vanishes_with_depth_smooth_does_not():
    x = torch.randn(1, 200, 2, dtype=F64)

    def residual_size(init, L):
        net = ResNet(depth=L, weight_init=init, init_scale=2.0)
        sizes = []
        for s in range(6):
            params = init_params(net, [s], F64)
            zs = net.states(params, x)
            sizes.append((zs[-1] - zs[0]).norm(dim=-1).mean().item())
        return float(np.mean(sizes))

    iid = [residual_size("iid", L) for L in (4, 256)]
    smooth = [residual_size("smooth", L) for L in (4, 256)]
    assert iid[1] < 0.3 * iid[0]  # ~ L^{-1/2}: a factor 8 from L = 4 to 256
    assert smooth[1] > 0.7 * smooth[0]


@pytest.mark.parametrize("interp", ["constant", "linear"])
def test_adjoint_gradients_match_gradients_through_the_solver(interp):
    kw = dict(in_dim=2, out_dim=2, width=4, knots=3, interpolation=interp, method="dopri5",
              rtol=1e-10, atol=1e-10)
    direct, adjoint = ODEResNet(**kw), ODEResNet(**kw, adjoint=True)
    params = init_params(direct, [0, 1], F64)
    x = torch.randn(2, 5, 2, dtype=F64)

    def grads(model):
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        loss = model.forward(leaves, x).square().sum()
        return torch.autograd.grad(loss, list(leaves.values()))

    for a, b in zip(grads(direct), grads(adjoint), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_piecewise_linear_flow_matches_fine_euler():
    model = ODEResNet(in_dim=2, out_dim=2, width=4, knots=4, interpolation="linear",
                      method="dopri5", rtol=1e-11, atol=1e-11)
    fine = ODEResNet(in_dim=2, out_dim=2, width=4, knots=4, interpolation="linear",
                     method="rk4", steps_per_knot=64)
    params = init_params(model, [5], F64)
    assert params["W"].shape[1] == 5  # P + 1 knot values
    x = torch.randn(1, 8, 2, dtype=F64)
    assert torch.allclose(model.forward(params, x), fine.forward(params, x), atol=1e-8)


def test_flow_map_returns_states_at_knots():
    model = ODEResNet(in_dim=2, out_dim=2, width=3, knots=5)
    params = init_params(model, [0], F64)
    z0 = torch.randn(1, 4, 3, dtype=F64)
    traj = model.flow(params, z0, return_knots=True)
    assert traj.shape == (6, 1, 4, 3)
    assert torch.equal(traj[0], z0)
    assert torch.equal(traj[-1], model.flow(params, z0))


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: ResNet(depth=-1), "depth must be an integer >= 1"),
        (lambda: ResNet(depth=0), "depth must be an integer >= 1"),
        (lambda: ResNet(horizon=0.0), "horizon must be a finite number > 0"),
        (lambda: ResNet(horizon=-1.0), "horizon must be a finite number > 0"),
        (lambda: ResNet(activation="swish"), "activation must be one of .*'tanh'"),
        (lambda: ResNet(width=2.5), "width must be an integer"),
        (lambda: ResNet(block="three_layer"), "block must be one of 'two_layer', 'one_layer'"),
        (lambda: ResNet(weight_init="xavier"), "weight_init must be one of 'smooth', 'iid'"),
        (lambda: ODEResNet(method="heun"), "method must be one of .*'dopri5'"),
        (lambda: ODEResNet(knots=0), "knots must be an integer >= 1"),
        (lambda: ConvResNet(channels=0), "channels must be an integer >= 1"),
        (lambda: ResNet(activation="soft_threshold", tau=-0.1), "tau must be a finite number"),
        (lambda: ResNet(tied=1), "tied must be true or false, got 1"),
        (lambda: ConvResNet(tied="yes"), "tied must be true or false"),
        (lambda: ODEResNet(adjoint=0), "adjoint must be true or false, got 0"),
    ],
)
def test_invalid_arguments_name_the_argument_and_the_allowed_values(factory, match):
    with pytest.raises((ValueError, TypeError), match=match):
        factory()


@pytest.mark.parametrize("horizon, h", [(1.0, 0.5), (2.0, 1.0)])  # h = T / L
def test_conv_resnet_matches_per_model_conv2d(horizon, h):
    import torch.nn.functional as F

    m = ConvResNet(in_channels=3, out_dim=5, channels=4, depth=2, activation="tanh", horizon=horizon)
    p = init_params(m, [0, 1], F64)
    x = torch.randn(2, 6, 3, 8, 8, dtype=F64)
    out = m.forward(p, x)
    for e in range(2):
        z = F.conv2d(x[e], p["A"][e].view(4, 3, 3, 3), p["c"][e], padding=1)
        for k in range(2):
            a = torch.tanh(F.conv2d(z, p["W"][e, k].view(4, 4, 3, 3), p["b"][e, k], padding=1))
            z = z + h * F.conv2d(a, p["V"][e, k].view(4, 4, 3, 3), padding=1)
        ref = z.mean((2, 3)) @ p["R"][e].T + p["r"][e]
        assert torch.allclose(out[e], ref, atol=1e-12)


def test_deepened_interpolates_the_layer_path_linearly_and_holds_it_past_the_last_layer():
    net = ResNet(in_dim=2, out_dim=2, width=3, hidden=4, depth=4, horizon=2.0)
    params = init_params(net, [0, 1], F64)
    t = net.layer_times()  # 0, 0.5, 1, 1.5
    slope = torch.randn(2, 1, 4, 3, dtype=F64)
    params["W"] = 0.3 + slope * t.view(1, -1, 1, 1)
    deep, out = net.deepened(params, 12)
    assert deep.depth == 12 and deep.step == pytest.approx(2.0 / 12)
    t_new = deep.layer_times()
    inside = t_new <= t[-1] + 1e-12
    # A path linear in t comes back exactly at every finer layer time up to t_{L-1} ...
    expected = 0.3 + slope * t_new.view(1, -1, 1, 1)
    assert torch.allclose(out["W"][:, inside], expected[:, inside], atol=1e-14)
    # ... and is held at theta_{L-1} after it; both models keep their own layers.
    assert torch.equal(out["W"][:, ~inside], params["W"][:, -1:].expand(-1, int((~inside).sum()), -1, -1))
    for name in ("A", "c", "R", "r"):
        assert torch.equal(out[name], params[name])
    same_net, same = net.deepened(params, 4)
    assert same_net == net and all(torch.equal(same[k], params[k]) for k in params)


def test_deepened_network_is_close_to_the_fine_discretisation_of_the_same_path():
    x = torch.randn(1, 300, 2, dtype=F64)
    coarse = ResNet(in_dim=2, out_dim=2, width=16, depth=16, activation="tanh")
    fine = ResNet(in_dim=2, out_dim=2, width=16, depth=256, activation="tanh")
    p16, p256 = init_params(coarse, [0], F64), init_params(fine, [0], F64)
    deep, pd = coarse.deepened(p16, 256)
    to_fine = (deep.forward(pd, x) - fine.forward(p256, x)).abs().max()
    euler = (coarse.forward(p16, x) - fine.forward(p256, x)).abs().max()
    # Same smooth path at the coarse times: the deepened network is the fine Euler scheme up to the
    # path's interpolation error (O(h^2), and the last interval held), far below the coarse
    # scheme's O(h) error (measured 0.011 against 0.13).
    assert to_fine < 0.2 * euler, (to_fine, euler)


@pytest.mark.parametrize("kwargs, depth, match", [({"tied": True}, 16, "tied"), ({}, 12, "multiple of 8"),
                                                  ({}, 0, "depth")])
def test_deepened_refuses_tied_networks_and_depths_that_are_not_multiples(kwargs, depth, match):
    net = ResNet(depth=8, **kwargs)
    with pytest.raises(ValueError, match=match):
        net.deepened(init_params(net, [0], F64), depth)
