"""Every path that computes the untied two-layer ResNet against the one reference recursion
(resdyn.models.reference): the autograd forward of blocks/resnet (bitwise: it is the reference's
code), the fused stack with its hand-written backward, the native kernel, and KnotResNet.forward;
values and every gradient in float64."""

import pytest
import torch

from helpers import graph_nodes
from resdyn.models import ResNet, init_params, native
from resdyn.models.blocks import readout
from resdyn.models.knot_resnet import KnotResNet
from resdyn.models.reference import reference_resnet, reference_stack, residual_layer

D64 = torch.float64
ACTS = ["tanh", "relu", "soft_threshold", "shifted_relu"]


def _problem(act="tanh", d=3, m=5, p=7, k=4, depth=6, B=3, n=11, seed=0):
    net = ResNet(in_dim=d, out_dim=k, width=m, hidden=p, depth=depth, activation=act, tau=0.3,
                 horizon=2.0, bias_scale=0.5)
    params = init_params(net, list(range(seed, seed + B)), D64)
    x = torch.randn(B, n, d, generator=torch.Generator().manual_seed(seed + 100), dtype=D64)
    w = torch.randn(B, n, k, generator=torch.Generator().manual_seed(seed + 200), dtype=D64)
    return net, params, x, w


def _value_and_grads(fn, params, x, w):
    """f and d(sum w f)/d(x, every parameter), on fresh leaves."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    xl = x.clone().requires_grad_(True)
    out = fn(leaves, xl)
    grads = torch.autograd.grad((out * w).sum(), [xl, *leaves.values()])
    return out, dict(zip(["x", *leaves], grads, strict=True))


def _close(got, want, atol):
    out, grads = got
    ref, ref_grads = want
    assert torch.allclose(out, ref, rtol=0, atol=atol), float((out - ref).abs().max())
    for name, g in grads.items():
        r = ref_grads[name]
        assert torch.allclose(g, r, rtol=0, atol=atol), (name, float((g - r).abs().max()))
        assert float(r.abs().max()) > 1e-3, name  # not a trivially zero gradient


def test_the_reference_is_the_recursion_written_out_by_hand():
    """One network, one row, plain matrix-vector products: the reference's batched code is the
    formula of its docstring (z_{l+1} = z_l + h V_l act(W_l z_l + b_l))."""
    net, params, x, _ = _problem(B=1, n=1)
    act, h = net.act, net.step
    p = {k: v[0] for k, v in params.items()}
    z = p["A"] @ x[0, 0] + p["c"]
    for l in range(net.depth):
        z = z + h * p["V"][l] @ act(p["W"][l] @ z + p["b"][l])
    f = p["R"] @ z + p["r"]
    assert torch.allclose(reference_resnet(params, x, h, act)[0, 0], f, rtol=0, atol=1e-14)
    # a wrong step or a missing residual would not match
    assert not torch.allclose(reference_resnet(params, x, 2 * h, act)[0, 0], f, atol=1e-6)


@pytest.mark.parametrize("act", ACTS)
def test_the_blocks_autograd_forward_is_the_reference_bitwise(act):
    """ResNet.states (blocks.residual_map layer by layer) then the readout: the reference's own
    code, so the same numbers and gradients, bitwise."""
    net, params, x, w = _problem(act)
    got = _value_and_grads(lambda p, z: readout(p, net.states(p, z)[-1]), params, x, w)
    want = _value_and_grads(lambda p, z: reference_resnet(p, z, net.step, net.act), params, x, w)
    assert torch.equal(got[0], want[0])
    for name in want[1]:
        assert torch.equal(got[1][name], want[1][name]), name


@pytest.mark.parametrize("act", ACTS)
def test_the_fused_stack_and_its_hand_written_backward_match_the_reference(act, monkeypatch):
    monkeypatch.setenv("RESDYN_NATIVE", "0")
    net, params, x, w = _problem(act)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    assert "_StackBackward" in graph_nodes(net.forward(leaves, x))  # the path under test
    got = _value_and_grads(net.forward, params, x, w)
    want = _value_and_grads(lambda p, z: reference_resnet(p, z, net.step, net.act), params, x, w)
    _close(got, want, 1e-12)


@pytest.mark.skipif(not native.enabled() or native.resnet_library(D64, 3, 5, 7, 4) is None,
                    reason="no native kernel on this machine")
@pytest.mark.parametrize("act", ACTS)
def test_the_native_kernel_matches_the_reference(act):
    net, params, x, w = _problem(act)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    assert any("native_resnet" in n for n in graph_nodes(net.forward(leaves, x)))
    got = _value_and_grads(net.forward, params, x, w)
    want = _value_and_grads(lambda p, z: reference_resnet(p, z, net.step, net.act), params, x, w)
    _close(got, want, 1e-12)


@pytest.mark.parametrize("interpolation", ["linear", "constant"])
def test_knot_resnet_forward_matches_the_reference_on_its_expanded_layers(interpolation):
    """KnotResNet.forward forms each layer's weights from the knots as the layer runs; the
    reference runs on the (B, L, ...) layers that ``layer_params`` expands. Gradients are with
    respect to the knots, through the expansion."""
    inner = ResNet(in_dim=3, out_dim=4, width=5, hidden=7, depth=12, activation="tanh",
                   horizon=2.0)
    knot = KnotResNet(inner, knots=4, interpolation=interpolation)
    params = init_params(knot, [0, 1], D64)
    x = torch.randn(2, 9, 3, generator=torch.Generator().manual_seed(3), dtype=D64)
    w = torch.randn(2, 9, 4, generator=torch.Generator().manual_seed(4), dtype=D64)
    got = _value_and_grads(knot.forward, params, x, w)
    want = _value_and_grads(
        lambda p, z: reference_resnet(knot.layer_params(p), z, inner.step, inner.act), params, x, w)
    _close(got, want, 1e-12)


def test_the_reference_stack_is_residual_layers_in_order():
    """reference_stack applies layer 0 first: swapping two layers changes z_L."""
    net, params, _, _ = _problem(depth=2)
    z0 = torch.randn(3, 11, 5, dtype=D64)
    W, b, V = params["W"], params["b"], params["V"]
    by_hand = z0 + net.step * residual_layer(z0, W[:, 0], b[:, 0], V[:, 0], net.act)
    by_hand = by_hand + net.step * residual_layer(by_hand, W[:, 1], b[:, 1], V[:, 1], net.act)
    assert torch.equal(reference_stack(z0, W, b, V, net.step, net.act), by_hand)
    swapped = reference_stack(z0, W.flip(1), b.flip(1), V.flip(1), net.step, net.act)
    assert not torch.allclose(swapped, by_hand, atol=1e-6)
