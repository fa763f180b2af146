"""The Volterra solvers against independent references, and the triangle-grid P1 machinery."""

import math

import numpy as np
import pytest
import torch
from torchdiffeq import odeint

from resdyn.models.activations import get_activation
from resdyn.models.dnl import DNLNet, VolterraDNL
from resdyn.models.volterra import (
    SmoothKernel,
    march,
    p1_at_grid,
    p1_norms,
    pair_count,
    pair_index,
    pair_nodes,
    solve_volterra,
)

F64 = torch.float64
B, n, m, r = 2, 5, 3, 2
T = 1.3


def _separable(seed=0):
    """K(t, s) = P(t) Q(s), b(t, s) = P(t) beta(s): smooth, K(t, t) != 0."""
    g = torch.Generator().manual_seed(seed)
    P0, P1 = (torch.randn(B, m, r, generator=g, dtype=F64) for _ in range(2))
    Q0, Q1 = (torch.randn(B, r, m, generator=g, dtype=F64) for _ in range(2))
    be0 = 0.5 * torch.randn(B, r, generator=g, dtype=F64)
    z0 = torch.randn(B, n, m, generator=g, dtype=F64)

    def P(t):  # (len, B, m, r)
        return P0 + torch.sin(2 * t).view(-1, 1, 1, 1) * P1

    def Q(s):
        return Q0 * torch.cos(s).view(-1, 1, 1, 1) + 0.5 * Q1 * s.view(-1, 1, 1, 1) ** 2

    def beta(s):
        return be0 * torch.exp(-s).view(-1, 1, 1)

    def kernel(t, s):
        return torch.einsum("pbmr,pbrn->bpmn", P(t), Q(s))

    def bias(t, s):
        return torch.einsum("pbmr,pbr->bpm", P(t), beta(s))

    act = get_activation("tanh")

    def field(t, y):  # y' = Q(t) act(z0 + P(t) y) + beta(t), y (B, n, r)
        tt = t.reshape(1)
        z = z0 + torch.einsum("bmr,bnr->bnm", P(tt)[0], y)
        return torch.einsum("brm,bnm->bnr", Q(tt)[0], act(z)) + beta(tt)[0].unsqueeze(1)

    yT = odeint(field, torch.zeros(B, n, r, dtype=F64), torch.tensor([0.0, T], dtype=F64),
                method="dopri5", rtol=1e-12, atol=1e-12)[-1]
    zT = z0 + torch.einsum("bmr,bnr->bnm", P(torch.tensor([T], dtype=F64))[0], yT)
    return kernel, bias, z0, zT


def _order(Ns, errs):
    return -np.polyfit(np.log(Ns), np.log(errs), 1)[0]


def test_rectangle_rule_is_first_order_and_is_the_dnl_network():
    kernel, bias, z0, zT = _separable()
    Ns = [16, 32, 64, 128, 256]
    errs = []
    for N in Ns:
        sol = solve_volterra(kernel, z0, T, N, rule="rectangle", bias=bias)
        errs.append((sol.states[-1] - zT).abs().max().item())
        if N == 32:
            # The DNL network with K_{k,j} = K(t_k, t_j), b_{k,j} = b(t_k, t_j), A = I, R = I.
            net = DNLNet(in_dim=m, out_dim=m, width=m, depth=N, horizon=T)
            k, j = pair_nodes(N)
            t, s = k.double() * T / N, j.double() * T / N
            eye = torch.eye(m, dtype=F64).expand(B, m, m)
            params = {"A": eye, "c": torch.zeros(B, m, dtype=F64), "K": kernel(t, s),
                      "b": bias(t, s), "R": eye, "r": torch.zeros(B, m, dtype=F64)}
            assert torch.allclose(net.forward(params, z0), sol.states[-1], atol=1e-13, rtol=0)
    order = _order(Ns, errs)
    print("rectangle errors", errs, "observed order", order)
    assert 0.9 <= order <= 1.1, (order, errs)


@pytest.mark.parametrize(("implicit", "Ns"), [("fixed_point", [8, 16, 32, 64, 128]),
                                              ("pc", [32, 64, 128, 256])])
def test_trapezoid_rule_is_second_order(implicit, Ns):
    kernel, bias, z0, zT = _separable()
    errs, iters = [], []
    for N in Ns:
        sol = solve_volterra(kernel, z0, T, N, rule="trapezoid", bias=bias, implicit=implicit,
                             corrections=1)
        errs.append((sol.states[-1] - zT).abs().max().item())
        iters.append(sol.iterations)
    order = _order(Ns, errs)
    print("trapezoid", implicit, "errors", errs, "observed order", order, "iterations", iters)
    assert 1.8 <= order <= 2.2, (order, errs)
    assert min(iters) >= 1  # the diagonal term made every grid implicit


def test_form_b_converges_to_the_ode_when_the_kernel_does_not_depend_on_t():
    """Form B with K(t, s) = K(s), b(t, s) = b(s) is z' = act(K(t) z + b(t))."""
    g = torch.Generator().manual_seed(3)
    K0, K1 = (torch.randn(B, m, m, generator=g, dtype=F64) for _ in range(2))
    b0 = torch.randn(B, m, generator=g, dtype=F64)
    z0 = torch.randn(B, n, m, generator=g, dtype=F64)

    def Kf(s):
        return K0 + torch.cos(3 * s).view(-1, 1, 1, 1) * K1

    def bf(s):
        return b0 * torch.sin(s).view(-1, 1, 1)

    def field(t, z):
        tt = t.reshape(1)
        return torch.tanh(torch.einsum("bmk,bnk->bnm", Kf(tt)[0], z) + bf(tt)[0].unsqueeze(1))

    zT = odeint(field, z0, torch.tensor([0.0, T], dtype=F64), method="dopri5", rtol=1e-12,
                atol=1e-12)[-1]
    orders = {}
    for rule, Ns in (("rectangle", [32, 64, 128, 256]), ("trapezoid", [8, 16, 32, 64])):
        errs = []
        for N in Ns:
            sol = solve_volterra(lambda t, s: Kf(s).transpose(0, 1), z0, T, N, form="B", rule=rule,
                                 bias=lambda t, s: bf(s).transpose(0, 1))
            errs.append((sol.states[-1] - zT).abs().max().item())
        orders[rule] = _order(Ns, errs)
    print("form B observed orders", orders)
    assert 0.9 <= orders["rectangle"] <= 1.1
    assert 1.8 <= orders["trapezoid"] <= 2.2


def test_march_takes_its_options_by_keyword_and_reports_the_iterations():
    kernel, bias, z0, _ = _separable()
    act, N = get_activation("tanh"), 4
    h = T / N
    k, j = pair_nodes(N, diagonal=True)
    W, b = kernel(k.double() * h, j.double() * h), bias(k.double() * h, j.double() * h)
    with pytest.raises(TypeError):
        march(z0, W, b, N, h, act, "A")  # form (and every later option) is keyword-only
    fp, its = march(z0, W, b, N, h, act, rule="trapezoid")
    assert its >= 2  # K(t, t) != 0: every step is implicit and needs iterating
    # The fixed point is the limit of many corrector steps from the same predictor.
    pc, n_pc = march(z0, W, b, N, h, act, rule="trapezoid", implicit="pc", corrections=80)
    assert n_pc == 80 and torch.allclose(fp[-1], pc[-1], atol=1e-12, rtol=0)
    one, _ = march(z0, W, b, N, h, act, rule="trapezoid", implicit="pc", corrections=1)
    assert (one[-1] - fp[-1]).abs().max() > 1e-8  # one correction is not yet the fixed point
    # With the diagonal weights zero every step is explicit: no iterations.
    diag = pair_index(torch.arange(N + 1), torch.arange(N + 1), diagonal=True)
    W0, b0 = W.clone(), b.clone()
    W0[:, diag], b0[:, diag] = 0.0, 0.0
    assert march(z0, W0, b0, N, h, act, rule="trapezoid")[1] == 0


def test_fixed_point_failure_names_the_step_and_the_remedy():
    z0 = torch.ones(1, 1, 1, dtype=F64)
    kernel = lambda t, s: 50.0 * torch.ones(1, len(t), 1, 1, dtype=F64)  # noqa: E731
    with pytest.raises(RuntimeError, match="did not converge at step 1"):
        solve_volterra(kernel, z0, 1.0, 2, rule="trapezoid", activation="relu", max_iter=5)


# ----------------------------------------------------------------------------- the packed index


@pytest.mark.parametrize("diagonal", [False, True])
def test_pair_index_counts_the_pairs_before_it_and_inverts_pair_nodes(diagonal):
    for N in range(1, 8):
        # brute force: the position of (k, j) in the row-major enumeration of the layout
        pairs = [(k, j) for k in range(N + 1) for j in range(k + 1 if diagonal else k)]
        assert [pair_index(k, j, diagonal) for k, j in pairs] == list(range(len(pairs)))
        assert pair_count(N, diagonal) == len(pairs)
        k, j = pair_nodes(N, diagonal)
        assert torch.equal(pair_index(k, j, diagonal), torch.arange(len(pairs)))
    assert pair_index(5, 2) == 12 and pair_index(5, 2, diagonal=True) == 17


def test_pair_index_refuses_pairs_outside_the_layout():
    for k, j, diagonal in [(3, 3, False), (3, -1, False), (0, 0, False), (3, 4, True), (2, -1, True)]:
        with pytest.raises(ValueError, match="a packed pair needs 0 <= j"):
            pair_index(k, j, diagonal)
    with pytest.raises(ValueError, match=r"0 <= j < k \(diagonal=False\)"):
        pair_index(torch.tensor([2, 3]), torch.tensor([1, 3]))
    assert pair_index(0, 0, diagonal=True) == 0


# ----------------------------------------------------------------------------- P1 on the triangle


def test_p1_extension_reproduces_linear_functions_and_nests():
    N, Nf = 4, 12
    k, j = pair_nodes(N)
    kf, jf = pair_nodes(Nf, diagonal=True)

    def lin(t, s):
        return (0.3 + 2.0 * t - 1.5 * s).view(1, -1, 1)

    theta = lin(k.double() / N, j.double() / N)
    assert torch.allclose(p1_at_grid(theta, N, Nf, diagonal=True), lin(kf.double() / Nf, jf.double() / Nf),
                          atol=1e-14) is False  # the ghost strip (t - h < s <= t) is not linear
    # Away from the strip it is exact:
    V = p1_at_grid(theta, N, Nf, diagonal=True)[0, :, 0]
    away = (kf - jf) >= Nf // N + (Nf // N)  # at least one coarse cell below the diagonal
    ref = lin(kf.double() / Nf, jf.double() / Nf)[0, :, 0]
    assert torch.allclose(V[away], ref[away], atol=1e-14)
    # Knot values are reproduced, and prolongation N -> 2N -> 4N equals N -> 4N.
    assert torch.equal(p1_at_grid(theta, N, N), theta)
    two = p1_at_grid(theta, N, 2 * N)
    assert torch.allclose(p1_at_grid(two, 2 * N, 4 * N), p1_at_grid(theta, N, 4 * N), atol=1e-15)


def test_p1_norms_are_exact_for_linear_functions_on_the_whole_triangle():
    # Values at every node (diagonal included) of f(t, s) = a + b t + c s.
    N, a, b, c = 5, 0.7, -1.1, 2.3
    k, j = pair_nodes(N, diagonal=True)
    t, s = k.double() * T / N, j.double() * T / N
    V = (a + b * t + c * s).view(1, -1, 1)
    l2, dir_ = p1_norms(V, N, T)
    # int over the triangle of f^2 (exact, by a fine midpoint rule on the polynomial)
    M = 2000
    tt = (torch.arange(M, dtype=F64) + 0.5) * T / M
    ss = tt
    Tg, Sg = torch.meshgrid(tt, ss, indexing="ij")
    inside = (Sg < Tg).double() + 0.5 * (Sg == Tg).double()
    ref_l2 = ((a + b * Tg + c * Sg) ** 2 * inside).sum().item() * (T / M) ** 2
    assert abs(l2.item() - ref_l2) < 1e-5
    assert abs(dir_.item() - (b * b + c * c) * T * T / 2) < 1e-12


def test_smooth_kernel_is_one_function_for_every_grid():
    g = torch.Generator().manual_seed(0)
    Kf = SmoothKernel.sample(g, (2, 3), 1.0, T)
    t = torch.tensor([0.0, 0.5, 1.3], dtype=F64)
    assert Kf(t, t * 0.5).shape == (3, 2, 3)
    a = DNLNet(depth=4, width=3).init(torch.Generator().manual_seed(1), F64, torch.device("cpu"))
    b = DNLNet(depth=8, width=3).init(torch.Generator().manual_seed(1), F64, torch.device("cpu"))
    k, j = pair_nodes(4)
    sub = [pair_index(2 * kk, 2 * jj) for kk, jj in zip(k.tolist(), j.tolist(), strict=True)]
    assert torch.allclose(a["K"], b["K"][sub], atol=1e-14)


def test_volterra_model_equals_the_network_on_its_own_grid_and_converges_on_fine_grids():
    net = DNLNet(in_dim=2, out_dim=2, width=3, depth=4, horizon=T, init_scale=1.5)
    params = {k: v.unsqueeze(0) for k, v in net.init(torch.Generator().manual_seed(2), F64,
                                                    torch.device("cpu")).items()}
    x = torch.randn(1, 6, 2, dtype=F64)
    same = VolterraDNL(**{f: getattr(net, f) for f in ("in_dim", "out_dim", "width", "depth", "horizon",
                                                      "init_scale")}, rule="rectangle")
    assert torch.allclose(same.forward(params, x), net.forward(params, x), atol=1e-14, rtol=0)
    outs = {}
    for rule in ("rectangle", "trapezoid"):
        for S in (64, 128, 256):
            vm = VolterraDNL(in_dim=2, out_dim=2, width=3, depth=4, horizon=T, steps=S, rule=rule)
            outs[rule, S] = vm.forward(params, x)
    # Both rules approach the same limit, the trapezoid one faster.
    e_rect = (outs["rectangle", 128] - outs["trapezoid", 256]).abs().max().item()
    e_trap = (outs["trapezoid", 128] - outs["trapezoid", 256]).abs().max().item()
    assert e_trap < 0.05 * e_rect, (e_trap, e_rect)
    assert pair_count(4) == 4 * 5 // 2 == params["K"].shape[1]  # pairs j < k <= N on the triangle
    assert math.isfinite(e_rect)
