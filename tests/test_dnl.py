"""The discrete DNL family: special cases (DenseNet, ResNet) and the within-layer operators."""

import math

import pytest
import torch
import torch.nn.functional as F

from resdyn.models import ResNet, init_params
from resdyn.models.dnl import DNLNet
from resdyn.models.dnl_ops import Operator
from resdyn.models.registry import build_model
from resdyn.models.volterra import pair_index

F64 = torch.float64


def _densenet_states(model: DNLNet, params, x):
    """Independent pre-activation DenseNet: z_k = z_0 + h (W_k act(cat(z_0..z_{k-1})) + beta_k),
    W_k = [K_{k,0}, ..., K_{k,k-1}] (one linear map of the concatenation), beta_k = sum_j b_{k,j}."""
    h = model.scale
    z0 = x @ params["A"].transpose(1, 2) + params["c"].unsqueeze(1)
    zs = [z0]
    for k in range(1, model.depth + 1):
        rows = [pair_index(k, j) for j in range(k)]
        Wk = torch.cat([params["K"][:, i] for i in rows], dim=2)  # (B, m, k m)
        beta = params["b"][:, rows].sum(1)
        hist = torch.cat([torch.tanh(z) for z in zs], dim=2)  # (B, n, k m)
        out = torch.stack([F.linear(hist[e], Wk[e], beta[e]) for e in range(len(Wk))])
        zs.append(z0 + h * out)
    return zs


@pytest.mark.parametrize("scaled", [True, False])
def test_pre_activation_densenet_layer_equals_the_dnl_sum(scaled):
    model = DNLNet(in_dim=3, out_dim=2, width=5, depth=9, scaled=scaled, init_scale=0.7)
    params = init_params(model, [0, 1, 2], F64)
    x = torch.randn(3, 7, 3, dtype=F64)
    ours = model.states(params, x)
    ref = _densenet_states(model, params, x)
    err = max((a - b).abs().max().item() for a, b in zip(ours, ref, strict=True))
    print(f"DenseNet (scaled={scaled}) vs DNL sum form: max error {err:.3e}")
    assert err < 1e-10


def test_conv_densenet_layer_equals_the_dnl_sum():
    """Conv(act(cat)) over concatenated channels equals sum_j conv_{k,j}(act(z_j))."""
    M, C, s = 6, 2, 3
    model = DNLNet(in_dim=4, out_dim=2, width=M * C, depth=5, operator="conv", positions=M,
                   kernel_size=s)
    params = init_params(model, [4], F64)
    x = torch.randn(1, 3, 4, dtype=F64)
    zs = model.states(params, x)
    h = model.step
    z0 = zs[0][0]
    err = 0.0
    for k in range(1, model.depth + 1):
        rows = [pair_index(k, j) for j in range(k)]
        w = torch.cat([params["K"][0, i].view(C, C, s) for i in rows], dim=1)  # (C, k C, s)
        hist = torch.cat([torch.tanh(z[0]).view(3, M, C).transpose(1, 2) for z in zs[:k]], dim=1)
        conv = F.conv1d(hist, w, padding=s // 2).transpose(1, 2).reshape(3, M * C)
        ref = z0 + h * (conv + params["b"][0, rows].sum(0))
        err = max(err, (ref - zs[k][0]).abs().max().item())
    print(f"conv DenseNet vs DNL: max error {err:.3e}")
    assert err < 1e-10


def test_k_independent_dnl_equals_the_one_layer_resnet():
    resnet = ResNet(in_dim=2, out_dim=3, width=4, depth=12, horizon=1.5, block="one_layer")
    rp = init_params(resnet, [5, 6], F64)
    model, dp = DNLNet.from_resnet(resnet, rp)
    assert model.family == "dnl" and set(dp) == set(rp)
    x = torch.randn(2, 10, 2, dtype=F64)
    zr, zd = resnet.states(rp, x), model.states(dp, x)
    err = max((a - b).abs().max().item() for a, b in zip(zr, zd, strict=True))
    out_err = (resnet.forward(rp, x) - model.forward(dp, x)).abs().max().item()
    print(f"ResNet vs K-independent DNL: states {err:.3e}, outputs {out_err:.3e}")
    assert err < 1e-12 and out_err < 1e-12
    # and a k-dependent perturbation is not a ResNet any more
    dp["K"] = dp["K"].clone()
    dp["K"][:, pair_index(7, 2)] += 0.5
    assert (resnet.forward(rp, x) - model.forward(dp, x)).abs().max().item() > 1e-4


def _loop_apply(op: Operator, params, W, u):
    """Direct loop over positions y (and y') for one model and one sample."""
    M, C = op.M, op.channels
    v = u.view(M, C)
    out = torch.zeros(M, C, dtype=u.dtype)
    if op.kind == "conv":
        s, r = op.kernel_size, op.kernel_size // 2
        Wc = W.view(C, C, s)
        for y in range(M):
            for o in range(s):
                yy = y + o - r
                if 0 <= yy < M:
                    out[y] += Wc[:, :, o] @ v[yy]
        return out.reshape(-1)
    for y in range(M):
        if op.kind == "nonlocal":
            py = (y + 0.5) / M
            wts = [math.exp(-((py - (z + 0.5) / M) ** 2) / (2 * op.bandwidth**2)) / M for z in range(M)]
            if op.normalize:
                tot = sum(wts)
                wts = [w / tot for w in wts]
        else:
            q = params["Wq"] @ v[y]
            scores = [float(q @ (params["Wk"] @ v[z])) / math.sqrt(op.D) for z in range(M)]
            mx = max(scores)
            ex = [math.exp(sc - mx) for sc in scores]
            wts = [e / sum(ex) for e in ex]
        acc = torch.zeros(C, dtype=u.dtype)
        for z in range(M):
            acc += wts[z] * v[z]
        out[y] = W @ acc
    return out.reshape(-1)


@pytest.mark.parametrize(("kind", "extra"), [("conv", {"kernel_size": 3}), ("conv", {"kernel_size": 5}),
                                             ("nonlocal", {"bandwidth": 0.15}),
                                             ("nonlocal", {"bandwidth": 0.3, "normalize": True}),
                                             ("attention", {"att_dim": 3})])
def test_each_nonlocal_operator_equals_a_direct_loop_over_positions(kind, extra):
    M, C, B, n = 7, 2, 2, 3
    op = Operator(kind, M * C, M, **extra)
    g = torch.Generator().manual_seed(9)
    params = {k: torch.stack([v, 1.3 * v]) for k, v in op.init(g).items()}
    W = torch.randn(B, C, op.feature_dim, generator=g, dtype=F64)
    u = torch.randn(B, n, M * C, generator=g, dtype=F64)
    out = op.apply(params, W, u)
    err = 0.0
    for e in range(B):
        pe = {k: v[e] for k, v in params.items()}
        for i in range(n):
            err = max(err, (out[e, i] - _loop_apply(op, pe, W[e], u[e, i])).abs().max().item())
    print(f"operator {kind} {extra} vs loop over positions: max error {err:.3e}")
    assert err < 1e-12


def test_attention_kernel_depends_on_the_state():
    op = Operator("attention", 8, 4)
    params = {k: v.unsqueeze(0) for k, v in op.init(torch.Generator().manual_seed(0)).items()}
    W = torch.eye(2, dtype=F64).unsqueeze(0)
    u = torch.randn(1, 1, 8, dtype=F64)
    # nonlinear in u: K[2u] != 2 K[u]
    assert (op.apply(params, W, 2 * u) - 2 * op.apply(params, W, u)).abs().max() > 1e-3


@pytest.mark.parametrize("operator", ["dense", "conv", "nonlocal", "attention"])
@pytest.mark.parametrize("form", ["A", "B"])
def test_every_operator_and_form_runs_batched_and_a_model_does_not_depend_on_its_batch(operator, form):
    model = DNLNet(in_dim=3, out_dim=2, width=8, depth=5, form=form, operator=operator, positions=4)
    seeds = [0, 1, 2]
    params = init_params(model, seeds, F64)
    x = torch.randn(3, 4, 3, dtype=F64)
    out = model.forward(params, x)
    assert out.shape == (3, 4, 2) and torch.isfinite(out).all()
    alone = model.forward(init_params(model, [seeds[1]], F64), x[1:2])
    assert torch.allclose(alone[0], out[1], atol=1e-14, rtol=0)
    out32 = model.forward(init_params(model, seeds, torch.float32), x.float())
    assert out32.dtype == torch.float32 and torch.allclose(out32.double(), out, atol=1e-4)


def test_form_b_is_the_activation_outside_the_sum():
    model = DNLNet(in_dim=2, out_dim=2, width=3, depth=3, form="B", activation="relu")
    p = init_params(model, [1], F64)
    x = torch.randn(1, 4, 2, dtype=F64)
    zs = model.states(p, x)
    h = model.step
    i = pair_index
    z0 = zs[0][0]

    def term(k, j):
        return torch.relu(zs[j][0] @ p["K"][0, i(k, j)].T + p["b"][0, i(k, j)])

    z3 = z0 + h * (term(3, 0) + term(3, 1) + term(3, 2))
    assert torch.allclose(zs[3][0], z3, atol=1e-14)


def test_unscaled_densenet_state_grows_with_depth_scaled_dnl_does_not():
    x = torch.randn(1, 64, 2, dtype=F64)

    def size(scaled, N):
        m = DNLNet(width=6, depth=N, scaled=scaled)
        return m.states(init_params(m, [0], F64), x)[-1].norm(dim=-1).mean().item()

    assert size(True, 64) < 2 * size(True, 4)
    assert size(False, 64) > 5 * size(False, 4)


def test_registry_builds_the_family_and_bad_options_are_named():
    m = build_model("dnl", width=4, depth=3)
    assert isinstance(m, DNLNet) and m.num_pairs == 6
    for kw, match in [({"form": "C"}, "form must be one of 'A', 'B'"),
                      ({"operator": "fft"}, "operator must be one of 'dense', 'conv'"),
                      ({"depth": 0}, "depth must be an integer >= 1"),
                      ({"operator": "conv", "width": 6, "positions": 4}, "positions must divide width"),
                      ({"operator": "conv", "positions": 2, "kernel_size": 4}, "kernel_size must be an odd"),
                      ({"weight_init": "xavier"}, "weight_init must be one of 'smooth', 'iid', 'zero'")]:
        with pytest.raises((ValueError, TypeError), match=match):
            DNLNet(**kw)


def test_prolong_keeps_the_network_and_equals_the_p1_extension_at_the_new_pairs():
    net = DNLNet(in_dim=2, out_dim=2, width=3, depth=2, weight_init="iid")
    deeper = DNLNet(in_dim=2, out_dim=2, width=3, depth=4, weight_init="iid")
    p = init_params(net, [0, 1], torch.float64)
    q = net.prolong(p, deeper)
    assert q["K"].shape == (2, deeper.num_pairs, 3, 3) and torch.equal(q["A"], p["A"])
    # Pairs (k, j) of grid 4 at nodes of grid 2 (both even) keep the old value; the pair (3, 0)
    # sits halfway between the grid-2 pairs (1, 0) and (2, 0) in t: the mean of the two.
    K2, K4 = p["K"], q["K"]
    assert torch.equal(K4[:, pair_index(2, 0)], K2[:, pair_index(1, 0)])
    assert torch.equal(K4[:, pair_index(4, 2)], K2[:, pair_index(2, 1)])
    assert torch.allclose(K4[:, pair_index(3, 0)],
                          0.5 * (K2[:, pair_index(1, 0)] + K2[:, pair_index(2, 0)]))
    with pytest.raises(ValueError, match="multiple of 2"):
        net.prolong(p, DNLNet(in_dim=2, out_dim=2, width=3, depth=3, weight_init="iid"))
    with pytest.raises(ValueError, match="equal this one"):
        net.prolong(p, DNLNet(in_dim=2, out_dim=2, width=5, depth=4, weight_init="iid"))
