"""The native kernel's cache loads only trusted compiled code, and no path differentiates twice
in silence or computes on the meta device."""

import hashlib
import os
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

import resdyn
from helpers import graph_nodes
from resdyn.models import ResNet, init_params, native, native_build
from resdyn.models.reference import reference_resnet

HAVE_CC = native_build.compiler() is not None
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler on this machine")
SHAPE = (torch.float64, 2, 8, 8, 2)  # (dtype, d, m, p, k): one small library (NV = 1)


def autograd_resnet(net, p, x):
    """The reference recursion (resdyn.models.reference) through autograd."""
    return reference_resnet(p, x, net.step, net.act)


def _target(cache: Path) -> Path:
    """Where the library of SHAPE is cached (built once to learn its name)."""
    assert native.resnet_library(*SHAPE) is not None, native_build._failure
    (lib,) = cache.glob("resnet_double_*.so")
    return lib


PLANTED = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen("%s", "w"); if (f) { fputs("ran", f); fclose(f); }
}
void rs_info(int *s) { s[0] = 8; s[1] = 1; s[2] = 2; s[3] = 1; }
int rs_forward(void) { return 0; }
int rs_backward(void) { return 0; }
"""


def _replace(target: Path, source: Path) -> None:
    """Put ``source`` at ``target`` as a new file. This process may have the old library mapped:
    rewriting that file in place would truncate the mapping under it (SIGBUS at exit)."""
    os.replace(source, target)


def _plant(tmp_path: Path, target: Path, marker: Path) -> None:
    """A library exporting the kernel's symbols whose constructor writes ``marker``."""
    src = tmp_path / "planted.c"
    src.write_text(PLANTED % marker)
    built = tmp_path / "planted.so"
    subprocess.run([native_build.compiler(), "-shared", "-fPIC", "-o", str(built), str(src)], check=True)
    _replace(target, built)


def _works(lib) -> bool:
    """The loaded library computes the two-layer ResNet (a planted fake would not)."""
    net = ResNet(in_dim=2, out_dim=2, width=8, hidden=8, depth=3)
    p = {k: v.double() for k, v in init_params(net, [0]).items()}
    x = torch.randn(1, 5, 2, dtype=torch.float64)
    return lib is not None and torch.allclose(net.forward(p, x), autograd_resnet(net, p, x))


@needs_cc
@pytest.mark.parametrize("with_record", [False, True])
def test_a_planted_library_never_runs_and_is_rebuilt(fresh, tmp_path, with_record):
    target = _target(fresh)
    marker = tmp_path / "marker"
    _plant(tmp_path, target, marker)
    if not with_record:
        Path(str(target) + ".sha256").unlink()
    native_build._libs.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lib = native.resnet_library(*SHAPE)
    assert not marker.exists(), "the planted library's constructor ran"
    assert _works(lib)
    if with_record:  # a record that does not match: said in one line
        (w,) = [str(w.message) for w in caught]
        assert "not loading the native ResNet library" in w and "recorded at its build" in w
        assert "\n" not in w


@needs_cc
@pytest.mark.parametrize("change", ["mode 777", "mode 720", "owner"])
def test_a_library_writable_by_others_or_of_another_user_is_refused_and_rebuilt(fresh, tmp_path,
                                                                                  change):
    """Writable by all (o+w) or by the group (g+w), or another user's: never loaded (its
    constructor does not run), whatever its record says; the warning names the cause."""
    target = _target(fresh)
    marker = tmp_path / "marker"
    _plant(tmp_path, target, marker)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    Path(str(target) + ".sha256").write_text(digest)  # even its record matches
    if change == "owner":
        if os.geteuid() != 0:
            pytest.skip("only root can give a file to another user")
        os.chown(target, 12345, 12345)
        cause = "belongs to user 12345"
    else:
        mode = int(change.split()[1], 8)
        target.chmod(mode)
        cause = rf"writable by others \(mode {mode:o}\)"
    native_build._libs.clear()
    with pytest.warns(RuntimeWarning, match=cause):
        lib = native.resnet_library(*SHAPE)
    assert not marker.exists() and _works(lib)
    assert not target.stat().st_mode & 0o022  # the rebuilt file is this user's alone


@needs_cc
def test_a_corrupt_ten_byte_library_is_rebuilt_and_used(fresh):
    target = _target(fresh)
    (fresh / "corrupt").write_bytes(b"0123456789")
    _replace(target, fresh / "corrupt")
    native_build._libs.clear()
    with pytest.warns(RuntimeWarning, match="recorded at its build"):
        lib = native.resnet_library(*SHAPE)
    assert _works(lib) and target.stat().st_size > 1000


@needs_cc
def test_a_cache_folder_writable_by_others_is_refused_and_the_torch_path_runs(fresh):
    fresh.mkdir(mode=0o700)
    fresh.chmod(0o777)
    with pytest.warns(RuntimeWarning, match=r"cache folder .* is writable by others \(mode 777\)"):
        assert native.resnet_library(*SHAPE) is None
    assert list(fresh.iterdir()) == []
    net = ResNet(in_dim=2, out_dim=2, width=8, hidden=8, depth=3)
    p = {k: v.double() for k, v in init_params(net, [0]).items()}
    x = torch.randn(1, 5, 2, dtype=torch.float64)
    assert torch.allclose(net.forward(p, x), autograd_resnet(net, p, x))


@needs_cc
def test_a_symlinked_library_is_not_followed(fresh, tmp_path):
    target = _target(fresh)
    marker = tmp_path / "marker"
    elsewhere = tmp_path / "evil.so"
    _plant(tmp_path, elsewhere, marker)
    target.unlink()
    target.symlink_to(elsewhere)
    Path(str(target) + ".sha256").write_text(hashlib.sha256(elsewhere.read_bytes()).hexdigest())
    native_build._libs.clear()
    with pytest.warns(RuntimeWarning, match="cannot be opened|not a regular file"):
        lib = native.resnet_library(*SHAPE)
    assert not marker.exists() and _works(lib)
    assert elsewhere.is_file()  # the link was replaced, not its target


# -- double backward and devices -----------------------------------------------------------------

def _penalised(forward, params, x):
    """Parameter gradients of loss + 10 |d loss / d x|^2 (a gradient penalty)."""
    x = x.clone().requires_grad_(True)
    loss = forward(params, x).square().mean()
    (gx,) = torch.autograd.grad(loss, x, create_graph=True)
    total = loss + 10 * gx.square().sum()
    return torch.autograd.grad(total, list(params.values()))


@pytest.mark.parametrize("act", ["tanh", "relu", "soft_threshold"])
def test_a_gradient_penalty_through_as_module_gives_the_autograd_answer(act):
    net = ResNet(in_dim=3, out_dim=2, width=5, hidden=7, depth=4, activation=act)
    params = {k: v.double() for k, v in init_params(net, [0]).items()}
    module = resdyn.as_module(net, params)
    x = torch.randn(9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    weights = {k: module.weights[k] for k in module.names}
    got = _penalised(lambda p, z: module(z), weights, x)
    ref = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    want = _penalised(lambda p, z: autograd_resnet(net, p, z.unsqueeze(0))[0], ref, x)
    no_penalty = torch.autograd.grad(autograd_resnet(net, ref, x.unsqueeze(0)).square().mean(),
                                     list(ref.values()))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)
    assert any(not torch.allclose(w, n) for w, n in zip(want, no_penalty, strict=True))
    if HAVE_CC and native.enabled():
        out = module(x.requires_grad_(True))
        # the kernel's path was the one tested
        assert any("resdyn_native_resnet" in n for n in graph_nodes(out))


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_a_gradient_penalty_through_the_torch_path_gives_the_autograd_answer(act, monkeypatch):
    """RESDYN_NATIVE=0: the fused torch stack (hand-written backward) differentiates twice by
    autograd, so the penalty's term is in the gradient, as in the plain recursion."""
    monkeypatch.setenv("RESDYN_NATIVE", "0")
    net = ResNet(in_dim=3, out_dim=2, width=5, hidden=7, depth=4, activation=act)
    params = {k: v.double() for k, v in init_params(net, [0]).items()}
    module = resdyn.as_module(net, params)
    x = torch.randn(9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = module(x.clone().requires_grad_(True))
    assert "_StackBackward" in graph_nodes(out)  # the fused stack is the path under test
    got = _penalised(lambda p, z: module(z), {k: module.weights[k] for k in module.names}, x)
    ref = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    want = _penalised(lambda p, z: autograd_resnet(net, p, z.unsqueeze(0))[0], ref, x)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def test_a_meta_input_is_an_error_not_values():
    net = ResNet(in_dim=2, out_dim=2, width=4, depth=3)
    params = init_params(net, [0])
    module = resdyn.as_module(net, params)
    with pytest.raises(ValueError, match="meta"):
        module(torch.zeros(5, 2, device="meta"))
    with pytest.raises(ValueError, match="meta"):
        net.forward(params, torch.zeros(1, 5, 2, device="meta"))
    for tied in (True, False):  # every family path of as_module checks, not only the kernel's
        other = ResNet(in_dim=2, out_dim=2, width=4, depth=3, tied=tied, activation="gelu")
        with pytest.raises(ValueError, match="meta"):
            resdyn.as_module(other, init_params(other, [0]))(torch.zeros(5, 2, device="meta"))


