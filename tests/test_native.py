"""The native two-layer ResNet (csrc/resnet.c through resdyn.models.native) against the reference
recursion (resdyn.models.reference), and the properties the engine relies on: chunks independent
of each other and of the thread count, NaN kept to its chunk, the build's failure reported and
survived. tests/test_native_build.py tests the build, the cache and the custom op."""

import shutil
import warnings

import pytest
import torch

from helpers import graph_nodes
from resdyn.models import ResNet, init_params, native, native_build, native_library
from resdyn.models.activations import get_activation
from resdyn.models.native import native_resnet, native_resnet_op
from resdyn.models.reference import reference_resnet

D64 = torch.float64
HAVE_CC = native_build.compiler() is not None
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler on this machine")
NAMES = ("A", "c", "W", "b", "V", "R", "r")


def ran_native(out) -> bool:
    """Whether the custom op of the kernel is in the graph behind ``out``."""
    return any("resdyn_native_resnet" in n for n in graph_nodes(out))


def ref_forward(net, p, x):
    """The reference recursion (autograd through resdyn.models.reference)."""
    return reference_resnet(p, x, net.step, net.act)


def _net_and_inputs(act="tanh", dtype=D64, seed=0, n=11, d=3, m=5, p=7, k=4, depth=6, B=3):
    net = ResNet(in_dim=d, out_dim=k, width=m, hidden=p, depth=depth, activation=act, tau=0.3,
                 horizon=2.0, bias_scale=0.5)
    params = {key: v.to(dtype) for key, v in init_params(net, list(range(seed, seed + B))).items()}
    x = torch.randn(B, n, d, generator=torch.Generator().manual_seed(seed + 100), dtype=dtype)
    return net, params, x


def test_a_machine_with_a_compiler_builds_the_kernel():
    """CI has a compiler: a broken build must fail here, not fall back to torch in silence."""
    if not HAVE_CC:
        pytest.skip("no C compiler on this machine")
    for dtype in (torch.float32, D64):
        lib = native.resnet_library(dtype, 2, 16, 16, 2)
        assert lib is not None and lib.vectors == (1 if dtype == torch.float32 else 2)


@needs_cc
@pytest.mark.parametrize("act", ["tanh", "relu", "soft_threshold", "shifted_relu"])
def test_native_resnet_matches_the_torch_recursion_in_value_and_every_gradient(act):
    # Odd widths (padded vector lanes) and 11 rows (a remainder after the blocks of 8 rows).
    net, params, x = _net_and_inputs(act)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    xl = x.clone().requires_grad_(True)
    out = net.forward(leaves, xl)
    assert ran_native(out)
    ref_leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    xr = x.clone().requires_grad_(True)
    ref = ref_forward(net, ref_leaves, xr)
    assert torch.allclose(out, ref, rtol=0, atol=1e-13)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=D64)
    g1 = torch.autograd.grad((out * w).sum(), [xl, *leaves.values()])
    g2 = torch.autograd.grad((ref * w).sum(), [xr, *ref_leaves.values()])
    for name, a, b in zip(["x", *leaves], g1, g2, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), (name, float((a - b).abs().max()))
        assert float(b.abs().max()) > 1e-3, name  # not a trivially zero gradient
    with torch.no_grad():  # without a graph: the same kernel, the same numbers
        assert torch.equal(net.forward(leaves, xl), out.detach())


@needs_cc
def test_a_network_too_deep_to_hold_all_its_layers_is_laid_out_layer_by_layer():
    """m = p = 16 in float64 (2 vectors a row), 500 layers: the backward's layout (8448 bytes a
    layer) passes the kernel's 4 MiB budget (one layer is then laid out per chunk), the
    forward's (4224 bytes a layer) does not (all 500 held)."""
    net, params, x = _net_and_inputs("tanh", n=9, d=3, m=16, p=16, k=2, depth=500, B=2)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    out = net.forward_chunks(leaves, x[[0, 1, 0]], torch.tensor([0, 1, 0]))
    ref_leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    ref = ref_forward(net, {k: v[[0, 1, 0]] for k, v in ref_leaves.items()}, x[[0, 1, 0]])
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    g1 = torch.autograd.grad(out.square().sum(), list(leaves.values()))
    g2 = torch.autograd.grad(ref.square().sum(), list(ref_leaves.values()))
    for name, a, b in zip(leaves, g1, g2, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-10), (name, float((a - b).abs().max()))


@needs_cc
def test_native_resnet_float32_is_within_float32_rounding_of_float64():
    net, params, x = _net_and_inputs("tanh", n=64, d=2, m=16, p=16, k=2, depth=8, B=4)
    with torch.no_grad():
        exact = net.forward(params, x)
        single = net.forward({k: v.float() for k, v in params.items()}, x.float())
    err = float((single.double() - exact).abs().max() / exact.abs().max())
    assert err < 2e-6, err


@needs_cc
def test_native_resnet_passes_gradcheck():
    net, params, x = _net_and_inputs("tanh", n=5, d=2, m=3, p=4, k=2, depth=3, B=2)
    assert native.resnet_library(D64, 2, 3, 4, 2) is not None
    leaves = [x.requires_grad_(True), *(params[k].requires_grad_(True) for k in NAMES)]
    owner = torch.arange(2)
    assert torch.autograd.gradcheck(
        lambda x, *w: native_resnet_op(x, owner, *w, net.step, 0, 0.0), leaves)


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float32, D64])
def test_native_tanh_is_within_two_units_of_the_last_place_of_torch_tanh(dtype):
    """d = 1, m = 2, p = 1, k = 1, h = 1: z_0 = (x, 0), u = x, z_1 = (x, tanh x), f = 0 x + 1 tanh x:
    the output is the kernel's tanh, exactly."""
    x = torch.linspace(-30, 30, 400_001, dtype=dtype).view(1, -1, 1)
    t = lambda *v: torch.tensor(v, dtype=dtype)  # noqa: E731
    params = {"A": t([[1.0], [0.0]]).view(1, 2, 1), "c": t(0.0, 0.0).view(1, 2),
              "W": t(1.0, 0.0).view(1, 1, 1, 2), "b": t(0.0).view(1, 1, 1),
              "V": t(0.0, 1.0).view(1, 1, 2, 1), "R": t(0.0, 1.0).view(1, 1, 2),
              "r": t(0.0).view(1, 1)}
    with torch.no_grad():
        y = native_resnet(params, x, 1.0, get_activation("tanh")).flatten()
    err = float((y - torch.tanh(x.flatten())).abs().max()) / torch.finfo(dtype).eps
    assert err <= 2.0, err
    assert float(y.min()) == -1.0 and float(y.max()) == 1.0  # saturates, never beyond


@needs_cc
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_chunk_is_bitwise_the_same_alone_among_others_and_on_any_number_of_threads(threads):
    net, params, x = _net_and_inputs("tanh", torch.float32, n=64, d=2, m=16, p=16, k=2,
                                     depth=8, B=7)
    w = torch.randn(7, 64, 2, generator=torch.Generator().manual_seed(4))
    before = torch.get_num_threads()

    def run(sl):
        leaves = {k: v[sl].clone().requires_grad_(True) for k, v in params.items()}
        out = net.forward(leaves, x[sl])
        return [out.detach(), *torch.autograd.grad((out * w[sl]).sum(), list(leaves.values()))]

    try:
        torch.set_num_threads(threads)
        together = run(slice(0, 7))
        torch.set_num_threads(1)
        alone = run(slice(4, 5))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(together, alone, strict=True):
        assert torch.equal(a[4:5], b)


@needs_cc
def test_chunks_read_their_models_weights_in_place_bitwise_as_the_gathered_forward():
    """forward_chunks (the engine's call) against forward on weights gathered per chunk: the same
    outputs, and each model's gradient the sum of its chunks' in chunk order, as index_add forms
    it; a model that owns no chunk gets a zero gradient."""
    net, params, _ = _net_and_inputs("tanh", torch.float32, n=16, d=2, m=16, p=16, k=2,
                                     depth=4, B=3)
    xs = torch.randn(6, 16, 2, generator=torch.Generator().manual_seed(7))
    owner = torch.tensor([0, 0, 0, 2, 2, 0])  # model 1 owns nothing
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    out = net.forward_chunks(leaves, xs, owner)
    gathered = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    ref = net.forward({k: v.index_select(0, owner) for k, v in gathered.items()}, xs)
    assert torch.equal(out, ref)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(8))
    g1 = torch.autograd.grad((out * w).sum(), list(leaves.values()))
    g2 = torch.autograd.grad((ref * w).sum(), list(gathered.values()))
    for name, a, b in zip(leaves, g1, g2, strict=True):
        assert torch.equal(a, b), name
        assert not a[1].any() and a[0].abs().sum() > 0, name
    with pytest.raises(ValueError, match="owner is outside"), torch.no_grad():
        net.forward_chunks(params, xs, torch.tensor([0, 0, 0, 3, 2, 0]))


@needs_cc
def test_a_chunk_with_nan_weights_leaves_the_others_finite():
    net, params, x = _net_and_inputs("tanh", torch.float32, n=9, d=2, m=4, p=4, k=2, depth=3)
    with torch.no_grad():
        params["W"][1, 2, 0, 0] = float("nan")
    leaves = {k: v.requires_grad_(True) for k, v in params.items()}
    out = net.forward(leaves, x)
    grads = dict(zip(leaves, torch.autograd.grad(out.sum(), list(leaves.values())), strict=True))
    assert torch.isnan(out[1]).all() and torch.isnan(grads["W"][1]).any()
    for t in (out, *grads.values()):
        assert torch.isfinite(t[[0, 2]]).all()


@needs_cc
def test_training_uses_the_kernel_and_evaluation_agrees_with_it_bitwise():
    net = ResNet(in_dim=2, out_dim=3, width=8, depth=5, activation="relu")
    p = {k: v.float().requires_grad_(True) for k, v in init_params(net, [0, 1]).items()}
    x = torch.randn(2, 10, 2)
    out = net.forward(p, x)
    assert ran_native(out)
    with torch.no_grad():
        assert torch.equal(net.forward(p, x), out.detach())


@needs_cc
def test_without_the_kernel_the_torch_path_gives_the_same_numbers(monkeypatch):
    net, params, x = _net_and_inputs("soft_threshold")
    assert native.resnet_library(D64, 3, 5, 7, 4) is not None  # "fast" is the kernel's
    with torch.no_grad():
        fast = net.forward(params, x)
        monkeypatch.setenv("RESDYN_NATIVE", "0")
        assert not native.enabled()
        slow = net.forward(params, x)
    assert torch.allclose(fast, slow, rtol=0, atol=1e-13)


def test_misshapen_weights_fall_to_the_torch_path_and_its_error_not_a_crash():
    net, params, x = _net_and_inputs("tanh", n=4, d=2, m=4, p=4, k=2, depth=3, B=2)
    params["V"] = params["V"][:, :, :3]  # (E, L, 3, p): one row short of m = 4
    with pytest.raises(RuntimeError), torch.no_grad():
        net.forward(params, x)


def test_gelu_and_tied_weights_take_the_torch_path():
    for net in (ResNet(width=4, depth=3, activation="gelu"), ResNet(width=4, depth=3, tied=True)):
        p = {k: v.requires_grad_(True) for k, v in init_params(net, [0]).items()}
        out = net.forward(p, torch.randn(1, 5, 2, dtype=p["A"].dtype))
        assert not ran_native(out)


@pytest.fixture
def no_library_yet(monkeypatch, tmp_path):
    """No library loaded in this process, no warning given yet, an empty cache folder."""
    monkeypatch.setattr(native_build, "_libs", {})
    monkeypatch.setattr(native_build, "_failure", None)
    monkeypatch.setattr(native_library, "_said", set())
    monkeypatch.setenv("RESDYN_NATIVE_CACHE", str(tmp_path))
    return tmp_path


def test_a_failed_build_warns_once_with_the_compilers_failure_and_returns_none(monkeypatch,
                                                                                no_library_yet):
    false = shutil.which("false")
    if false is None:
        pytest.skip("no `false` program to stand in for a broken compiler")
    monkeypatch.setenv("CC", false)
    with pytest.warns(RuntimeWarning, match="could not compile resnet.c") as caught:
        assert native.resnet_library(torch.float32, 2, 16, 16, 2) is None
    assert not any("Install a C compiler" in str(w.message) for w in caught)  # there is one
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is silent
        assert native.resnet_library(torch.float32, 2, 8, 8, 2) is None
    assert list(no_library_yet.iterdir()) == []  # no half-built file left behind


def test_no_compiler_at_all_says_to_install_one(monkeypatch, no_library_yet):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(no_library_yet))  # no cc, gcc or clang on it
    with pytest.warns(RuntimeWarning, match="no C compiler found.*Install a C compiler"):
        assert native.resnet_library(torch.float64, 2, 4, 4, 2) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process, not once per width
        assert native.resnet_library(torch.float64, 2, 64, 64, 2) is None
