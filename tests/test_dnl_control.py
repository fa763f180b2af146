"""The optimal-control objective of the DNL family: penalties, extension, prolongation, training."""

import itertools
import math

import torch

from resdyn.data.synthetic import two_spirals
from resdyn.models import ResNet, init_params
from resdyn.models.dnl import DNLNet
from resdyn.models.volterra import SmoothKernel, pair_nodes
from resdyn.training.control import (
    ControlWeights,
    continuous_objective,
    continuous_penalty,
    control_l2_distance,
    h1_penalty,
    h1_penalty_layers,
    objective,
    prolongate,
    train_control,
)

F64 = torch.float64


def test_resnet_penalty_is_the_triangle_penalty_restricted_to_k_independent_controls():
    N, T = 7, 1.4
    theta = torch.randn(2, N, 3, 3, dtype=F64)
    _, j = pair_nodes(N)
    broadcast = theta.index_select(1, j)
    a = h1_penalty_layers(theta, N, T, 0.3, 0.7)
    b = h1_penalty(broadcast, N, T, 0.3, 0.7)
    assert torch.allclose(a, b, rtol=1e-13, atol=0)
    # by hand, N = 2, pairs (1,0), (2,0), (2,1): k-diff (1,0)->(2,0), j-diff (2,0)->(2,1)
    th = torch.tensor([[1.0, 2.0, 4.0]], dtype=F64)  # (B=1, P=3)
    h = 0.5
    ref = 0.3 * h * h * (1 + 4 + 16) + 0.7 * ((2 - 1) ** 2 + (4 - 2) ** 2)
    assert abs(h1_penalty(th, 2, 1.0, 0.3, 0.7).item() - ref) < 1e-14


def test_discrete_penalty_approaches_the_continuous_one_for_a_smooth_control():
    T = 1.0
    kern = SmoothKernel.sample(torch.Generator().manual_seed(0), (2,), 1.0, T)
    gaps = []
    for N in (8, 16, 32, 64):
        k, j = pair_nodes(N)
        theta = kern(k.double() * T / N, j.double() * T / N).unsqueeze(0)
        model = DNLNet(width=2, depth=N, horizon=T)
        disc = h1_penalty(theta, N, T, 1.0, 1.0).item()
        cont = continuous_penalty(model, theta, 1.0, 1.0).item()
        gaps.append(abs(disc - cont) / cont)
    assert gaps[-1] < 0.05 and gaps[-1] < 0.6 * gaps[-2] < 0.6 * 0.6 * gaps[-3], gaps


def test_l2_distance_is_exact_and_prolongation_is_the_same_function_off_the_diagonal_strip():
    N, T = 4, 2.0
    theta = torch.randn(1, 10, 2, dtype=F64)
    assert control_l2_distance(theta, N, theta, N, T).item() == 0.0
    # a constant shift c: ||c||_{L^2(Delta)} = |c| sqrt(T^2 / 2) (2 entries)
    d = control_l2_distance(theta, N, theta + 0.3, N, T).item()
    assert abs(d - 0.3 * math.sqrt(2 * T * T / 2)) < 1e-13
    # Grids nest and the extension is constant along s in the diagonal strip, so the prolongation
    # is the same function: ||Pi theta_N - Pi prolongate(theta_N)|| = 0.
    kern = SmoothKernel.sample(torch.Generator().manual_seed(1), (2,), 1.0, 1.0)
    dists = []
    for N in (4, 8, 16, 32):
        k, j = pair_nodes(N)
        theta = kern(k.double() / N, j.double() / N).unsqueeze(0)
        deeper, p2 = prolongate(DNLNet(width=2, depth=N), {"K": theta, "b": theta})
        assert deeper.depth == 2 * N
        assert control_l2_distance(theta, N, p2["K"], 2 * N, 1.0).item() < 1e-14
        # samples of one smooth kernel on grids N and 2N: the strip of width h where the
        # extension is constant in s dominates, an O(h^{3/2}) distance
        k2, j2 = pair_nodes(2 * N)
        theta2 = kern(k2.double() / (2 * N), j2.double() / (2 * N)).unsqueeze(0)
        dists.append(control_l2_distance(theta, N, theta2, 2 * N, 1.0).item())
    rates = [math.log2(a / b) for a, b in itertools.pairwise(dists)]
    assert all(1.3 < r < 1.7 for r in rates[1:]), (dists, rates)  # N = 4 is pre-asymptotic


def test_continuous_objective_on_the_networks_own_grid_is_its_data_loss():
    x, y = two_spirals(30, seed=1)
    model = DNLNet(width=3, depth=5)
    p = init_params(model, [0, 1], F64)
    w = ControlWeights(1e-2, 1e-1, 1e-3)
    disc = objective(model, p, x, y, w)
    same = continuous_objective(model, p, x, y, w, fine_steps=5, rule="rectangle")
    assert torch.allclose(disc["loss"], same["loss"], atol=1e-14, rtol=0)
    fine = [continuous_objective(model, p, x, y, w, fine_steps=5 * s)["J"] for s in (4, 8, 16)]
    assert ((fine[2] - fine[1]).abs() < 0.35 * (fine[1] - fine[0]).abs()).all()
    r = ResNet(width=3, depth=4, block="one_layer")
    rp = init_params(r, [0], F64)
    assert torch.allclose(objective(r, rp, x, y, w)["loss"],
                          continuous_objective(r, rp, x, y, w, 4, rule="rectangle")["loss"], atol=1e-14)


def test_a_model_trained_in_a_group_equals_the_model_trained_alone():
    x, y = two_spirals(40, seed=2, turns=0.75)
    model = DNLNet(width=3, depth=3)
    w = ControlWeights(1e-2, 1e-1, 1e-3)
    p = init_params(model, [0, 1, 2], F64)
    lrs = torch.tensor([1e-2, 5e-3, 2e-2], dtype=F64)
    group = train_control(model, p, x, y, w, adam_steps=40, lr=lrs, lbfgs_iters=30)
    alone = train_control(model, {k: v[1:2] for k, v in p.items()}, x, y, w, adam_steps=40,
                          lr=lrs[1:2], lbfgs_iters=30)
    for k in alone.params:
        assert torch.allclose(group.params[k][1], alone.params[k][0], atol=1e-10, rtol=0), k
    m = group.metrics
    assert torch.all(m["J"] <= m["adam_J"]) and torch.all(m["J"] < group.history[0])
    # The reported optimum is the objective of the returned parameters, recomputed here.
    J = objective(model, group.params, x, y, w)["J"]
    assert torch.allclose(m["J"], J, rtol=1e-10, atol=0)
    assert torch.equal(group.params["A"], p["A"])  # the embedding is frozen
