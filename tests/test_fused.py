"""The fused two-layer residual stack against the reference recursion (resdyn.models.reference)
through autograd, and the tanh it uses. These test the torch path (CUDA, and CPUs without a C
compiler): the native kernel that ResNet.forward prefers on the CPU is switched off here and
tested in tests/test_native.py."""

import pytest
import torch
from torch.func import jacrev

from helpers import graph_nodes
from resdyn.models import ResNet, init_params
from resdyn.models.activations import get_activation
from resdyn.models.blocks import embed
from resdyn.models.fused import _Stack
from resdyn.models.reference import reference_resnet

D64 = torch.float64


@pytest.fixture(autouse=True)
def _torch_path(monkeypatch):
    monkeypatch.setenv("RESDYN_NATIVE", "0")


@pytest.mark.parametrize("act", ["tanh", "relu", "soft_threshold", "shifted_relu"])
def test_fused_stack_matches_autograd_in_value_and_every_gradient(act):
    net = ResNet(in_dim=3, out_dim=4, width=5, hidden=7, depth=6, activation=act, horizon=2.0)
    assert get_activation(act).grad_from_output is not None
    p = {k: v.requires_grad_(True) for k, v in init_params(net, [0, 1, 2], D64).items()}
    x = torch.randn(3, 9, 3, generator=torch.Generator().manual_seed(1), dtype=D64)
    fused, ref = net.forward(p, x), reference_resnet(p, x, net.step, net.act)
    assert "_StackBackward" in graph_nodes(fused)  # the fused node, not the fallback loop
    assert torch.allclose(fused, ref, rtol=0, atol=1e-13)
    w = torch.randn(fused.shape, generator=torch.Generator().manual_seed(2), dtype=D64)
    g1 = torch.autograd.grad((fused * w).sum(), list(p.values()))
    g2 = torch.autograd.grad((ref * w).sum(), list(p.values()))
    for name, a, b in zip(p, g1, g2, strict=True):
        assert a.shape == b.shape and (a.is_contiguous() or name not in "WbV"), name
        assert torch.allclose(a, b, rtol=0, atol=1e-12), (name, float((a - b).abs().max()))
        assert float(b.abs().max()) > 1e-3, name  # the gradient compared is not trivially zero


def test_fused_stack_passes_gradcheck():
    net = ResNet(in_dim=2, out_dim=2, width=3, hidden=4, depth=3, activation="tanh", horizon=1.5)
    p = init_params(net, [4, 5], D64)
    x = torch.randn(2, 5, 2, generator=torch.Generator().manual_seed(0), dtype=D64)
    z0 = embed(p, x).requires_grad_(True)
    W, b, V = (p[k].clone().requires_grad_(True) for k in ("W", "b", "V"))
    assert torch.autograd.gradcheck(lambda *t: _Stack.apply(*t, net.step, net.act), (z0, W, b, V))


def test_torch_func_transforms_take_the_autograd_path():
    # jacrev (the Gram diagnostics) cannot run a hand-written backward; the stack falls back.
    net = ResNet(in_dim=2, out_dim=1, width=4, depth=3, activation="tanh")
    p = init_params(net, [0], D64)
    x = torch.randn(1, 6, 2, dtype=D64)
    jac = jacrev(lambda W: net.forward({**p, "W": W}, x)[0, :, 0])(p["W"])
    eps = 1e-6
    bump = torch.zeros_like(p["W"])
    bump[0, 1, 2, 3] = eps
    fd = (net.forward({**p, "W": p["W"] + bump}, x) - net.forward({**p, "W": p["W"] - bump}, x))[0, :, 0]
    assert torch.allclose(jac[:, 0, 1, 2, 3], fd / (2 * eps), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tanh_is_within_two_units_of_the_last_place_of_torch_tanh(dtype):
    z = torch.linspace(-30, 30, 400001, dtype=dtype)
    ours = get_activation("tanh")(z)
    err = (ours.double() - torch.tanh(z.double())).abs().max()
    assert float(err) <= 2 * torch.finfo(dtype).eps
    assert float(ours.abs().max()) <= 1.0
    assert float(get_activation("tanh")(torch.zeros(1, dtype=dtype))) == 0.0
    g, a = torch.randn(100, dtype=dtype), torch.tanh(torch.randn(100, dtype=dtype))
    assert torch.allclose(get_activation("tanh").grad_from_output(g, a), g * (1 - a * a), rtol=0,
                          atol=8 * torch.finfo(dtype).eps)
