"""The native kernel's delivery: few builds for many shapes, damaged or stale files rebuilt once,
failures that name their cause, a bounded cache, a warning for a kernel without threads, the
provenance record, and the custom op as torch.compile and torch.func see it."""

import hashlib
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import graph_nodes
from resdyn.models import ResNet, init_params, native, native_build
from resdyn.models.native import native_resnet_op
from resdyn.models.reference import reference_resnet

D64, F32 = torch.float64, torch.float32
HAVE_CC = native_build.compiler() is not None
pytestmark = pytest.mark.skipif(not HAVE_CC, reason="no C compiler on this machine")
SHAPE = (D64, 2, 8, 8, 2)  # (dtype, d, m, p, k): the library of float64, NV = 1
NAMES = ("A", "c", "W", "b", "V", "R", "r")

#: (dtype, d, m, p, k) of every network the suite runs through the kernel, by the tests that do:
#: test_native (odd widths 5/7, the grid's 16, float32 and float64, the 500-layer 16-wide one, the
#: 1-2-1 tanh probe, gradcheck's 3/4), test_reference, test_hardening_native (8-wide, 5/7 penalty),
#: test_engine and test_optim_flat (widths 4, 8 and 16, float32), test_objective and the sweeps
#: (widths 3, 4 and 6, float32), test_pacbayes_models (widths 6 and 8, float64), test_data_sets
#: (64 inputs, width 32, 10 classes, float32).
SUITE_SHAPES = [
    (F32, 2, 16, 16, 2), (F32, 2, 8, 8, 3), (F32, 2, 4, 4, 2), (F32, 2, 8, 8, 2), (F32, 2, 6, 6, 2),
    (F32, 2, 3, 3, 2), (F32, 2, 8, 8, 1), (F32, 1, 2, 1, 1), (F32, 64, 32, 32, 10),
    (D64, 3, 5, 7, 4), (D64, 2, 3, 4, 2), (D64, 1, 2, 1, 1), (D64, 3, 16, 16, 2), (D64, 2, 16, 16, 2),
    (D64, 2, 8, 8, 2), (D64, 3, 5, 7, 2), (D64, 2, 6, 6, 2), (D64, 2, 2, 2, 2),
]


def _net(act="tanh", m=8, dtype=D64):
    net = ResNet(in_dim=2, out_dim=2, width=m, hidden=m, depth=3, activation=act)
    params = init_params(net, [0, 1], dtype)
    x = torch.randn(2, 5, 2, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return net, params, x


def _step(net, params, x):
    """One forward and backward, as a training step runs them; the output."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    out = net.forward(leaves, x)
    out.square().sum().backward()
    return out


def _right(out, net, params, x) -> bool:
    return torch.allclose(out, reference_resnet(params, x, net.step, net.act), rtol=0, atol=1e-12)


def _library_file(cache: Path) -> Path:
    (lib,) = cache.glob("resnet_double_nv1_*.so")
    return lib


def _put(target: Path, data: bytes, record: bool) -> None:
    """Replace ``target`` by a new file holding ``data`` (this process may have the old one
    mapped: rewriting it in place would pull the pages from under it), with a matching sha256
    record when ``record``."""
    tmp = target.with_name("planted")
    tmp.write_bytes(data)
    tmp.chmod(0o700)
    os.replace(tmp, target)
    if record:
        Path(str(target) + ".sha256").write_text(hashlib.sha256(data).hexdigest())


# -- builds ---------------------------------------------------------------------------------------

def test_every_shape_the_suite_runs_takes_at_most_four_builds(fresh, monkeypatch):
    builds = []
    compile_ = native_build._compile
    monkeypatch.setattr(native_build, "_compile", lambda *a: builds.append(a[2].name) or compile_(*a))
    for shape in SUITE_SHAPES:
        assert native.resnet_library(*shape) is not None, shape
    assert len(builds) <= 4, builds
    assert len(builds) == len(set(builds))  # never the same library twice
    assert sorted(p.name for p in fresh.glob("*.so")) == sorted(builds)
    # widths 1..16 in float32 are one library, whatever d and k
    assert {native.vectors_for(F32, m, p) for m in range(1, 17) for p in range(1, 17)} == {1}


def test_a_corrupt_file_with_a_matching_record_is_rebuilt_once_and_then_runs(fresh):
    """A file that passes the trust checks but is not a library (damaged on disk, record and
    all): one warning with the loader's own error, a new build, and the kernel runs on it."""
    net, params, x = _net()
    assert native.resnet_library(*SHAPE) is not None
    target = _library_file(fresh)
    _put(target, b"0123456789", record=True)
    native_build._libs.clear()
    with pytest.warns(RuntimeWarning, match=r"does not load \(.*(ELF|too short|invalid).*\); it is "
                                            r"rebuilt") as caught:
        lib = native.resnet_library(*SHAPE)
    assert not any("C compiler" in str(w.message) for w in caught)
    assert lib is not None and target.stat().st_size > 1000
    native.reset_usage()
    out = _step(net, params, x)
    assert _right(out, net, params, x)
    record = native.provenance()
    assert record["native_kernel"] is True
    assert record["library_sha256"] == [hashlib.sha256(target.read_bytes()).hexdigest()]


STALE = r"""
void rs_info(int *s) { s[0] = 8; s[1] = 1; s[2] = 1; s[3] = 1; }
int rs_forward(void) { return 0; }
int rs_backward(void) { return 0; }
"""


def test_a_stale_library_of_an_older_kernel_layout_is_rebuilt(fresh, tmp_path):
    assert native.resnet_library(*SHAPE) is not None
    target = _library_file(fresh)
    src = tmp_path / "stale.c"
    src.write_text(STALE)
    built = tmp_path / "stale.so"
    subprocess.run([native_build.compiler(), "-shared", "-fPIC", "-o", str(built), str(src)], check=True)
    _put(target, built.read_bytes(), record=True)
    native_build._libs.clear()
    with pytest.warns(RuntimeWarning, match=r"built for \(bytes, NV, ABI\) = \(8, 1, 1\), not "
                                            r"\(8, 1, 2\)\); it is rebuilt"):
        lib = native.resnet_library(*SHAPE)
    net, params, x = _net()
    assert lib is not None and _right(_step(net, params, x), net, params, x)


def test_a_library_that_never_loads_disables_only_its_own_widths(fresh, monkeypatch):
    """The rebuilt file fails too: one warning with the cause (not 'install a C compiler'), the
    torch path for that library's widths, and the kernel for the others."""
    load = native_build.load_library

    def failing(path, dtype, nv, opened):
        if nv == 2:
            raise OSError("simulated loader failure")
        return load(path, dtype, nv, opened)

    monkeypatch.setattr(native_build, "load_library", failing)
    with pytest.warns(RuntimeWarning) as caught:
        assert native.resnet_library(D64, 2, 16, 16, 2) is None
    said = [str(w.message) for w in caught]
    assert any("it is rebuilt" in s for s in said)
    assert any("still does not load: simulated loader failure" in s for s in said)
    assert not any("C compiler" in s for s in said)
    assert native.resnet_library(*SHAPE) is not None  # another width keeps the kernel
    net, params, x = _net(m=16)
    native.reset_usage()
    assert _right(_step(net, params, x), net, params, x)  # the torch path, right
    assert native.provenance()["native_kernel"] is False


def test_the_cache_is_bounded_and_drops_old_layouts_and_leftovers(fresh):
    fresh.mkdir(mode=0o700)
    old = time.time() - 7200
    planted = []
    for i in range(native.MAX_CACHED + 5):
        lib = fresh / f"resnet_float_nv1_{i:016x}.so"
        lib.write_bytes(b"x")
        Path(str(lib) + ".sha256").write_text("0" * 64)
        os.utime(lib, (old + i, old + i))  # i = 0 is the least recently used
        planted.append(lib)
    earlier = fresh / "resnet_float_2x16x16x2_0123456789abcdef.so"  # one library per shape
    earlier.write_bytes(b"x")
    leftovers = [fresh / "tmpabc.so.tmp", fresh / "resnet_float_nv2_ffffffffffffffff.so.sha256"]
    for p in leftovers:
        p.write_bytes(b"x")
    os.utime(leftovers[0], (old, old))
    building = fresh / "tmpnow.so.tmp"  # another process's build in progress
    building.write_bytes(b"x")
    keep = fresh / "notes.txt"
    keep.write_text("not ours")
    assert native.resnet_library(*SHAPE) is not None
    libraries = sorted(p.name for p in fresh.glob("*.so"))
    assert len(libraries) == native.MAX_CACHED
    assert _library_file(fresh).name in libraries
    assert [p.exists() for p in planted] == [False] * 6 + [True] * (native.MAX_CACHED - 1)
    assert not Path(str(planted[0]) + ".sha256").exists()  # the record goes with its library
    assert not earlier.exists() and not any(p.exists() for p in leftovers)
    assert building.exists() and keep.exists()


def test_a_compiler_without_openmp_warns_that_the_kernel_runs_on_one_thread(fresh, tmp_path,
                                                                            monkeypatch):
    cc = tmp_path / "cc-no-openmp"
    cc.write_text("#!/bin/sh\nfor a in \"$@\"; do if [ \"$a\" = -fopenmp ]; then\n"
                  "  echo \"clang: error: unsupported option '-fopenmp'\" >&2; exit 1; fi; done\n"
                  f"exec {native_build.compiler()} \"$@\"\n")
    cc.chmod(0o700)
    monkeypatch.setenv("CC", str(cc))
    with pytest.warns(RuntimeWarning, match=r"unsupported option '-fopenmp'.*runs on one thread"):
        lib = native.resnet_library(*SHAPE)
    assert lib is not None and lib.openmp is False
    net, params, x = _net()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        out = _step(net, params, x)
    finally:
        torch.set_num_threads(before)
    assert _right(out, net, params, x)
    assert native.provenance()["openmp"] is False


# -- provenance -----------------------------------------------------------------------------------

def test_provenance_says_whether_the_kernel_ran_since_the_last_reset(fresh, monkeypatch):
    net, params, x = _net("relu")
    native.reset_usage()
    assert native.provenance()["native_kernel"] is False
    _step(net, params, x)
    record = native.provenance()
    lib = native.resnet_library(*SHAPE)
    assert record["native_kernel"] is True
    assert record["libraries"] == {lib.path.name: hashlib.sha256(lib.path.read_bytes()).hexdigest()}
    assert record["compiler"] == native_build.compiler() and record["compiler_version"]
    assert record["openmp"] is True and "\n" not in record["compiler_version"]
    assert record["cpu_flags"] and record["cpu_flags"] in Path("/proc/cpuinfo").read_text()
    native.reset_usage()
    monkeypatch.setenv("RESDYN_NATIVE", "0")
    assert _right(_step(net, params, x), net, params, x)
    assert native.provenance()["native_kernel"] is False  # the torch path ran
    assert native.provenance()["enabled"] is False
    monkeypatch.delenv("RESDYN_NATIVE")
    gelu, gp, gx = _net("gelu")
    _step(gelu, gp, gx)
    assert native.provenance()["native_kernel"] is False  # an activation the kernel lacks
    with torch.no_grad():
        net.forward(params, x)
    assert native.provenance()["native_kernel"] is True  # evaluation runs it too


# -- the custom op --------------------------------------------------------------------------------

def _op_args(dtype=D64):
    net = ResNet(in_dim=2, out_dim=2, width=3, hidden=4, depth=3, activation="tanh", horizon=1.5)
    p = init_params(net, [4, 5], dtype)
    x = torch.randn(2, 5, 2, generator=torch.Generator().manual_seed(0), dtype=dtype)
    return net, p, x


def test_the_op_passes_torch_library_opcheck_and_gradgradcheck():
    net, p, x = _op_args()
    leaves = [x.requires_grad_(True), *(p[k].requires_grad_(True) for k in NAMES)]
    owner = torch.tensor([1, 0])
    torch.library.opcheck(native_resnet_op, (leaves[0], owner, *leaves[1:], net.step, 0, 0.0))
    assert torch.autograd.gradgradcheck(
        lambda x, *w: native_resnet_op(x, owner, *w, net.step, 0, 0.0), leaves)


def test_torch_compile_traces_the_op_in_one_graph_with_the_eager_numbers(fresh):
    net, p, x = _op_args()
    assert native.resnet_library(D64, 2, 3, 4, 2) is not None
    eager_leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    eager = net.forward(eager_leaves, x)
    g_eager = torch.autograd.grad(eager.square().sum(), list(eager_leaves.values()))
    torch._dynamo.reset()
    compiled = torch.compile(net.forward, backend="aot_eager", fullgraph=True)
    leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    native.reset_usage()
    out = compiled(leaves, x)
    grads = torch.autograd.grad(out.square().sum(), list(leaves.values()))
    assert native.provenance()["native_kernel"] is True  # the compiled graph ran the kernel
    assert torch.equal(out, eager)
    for a, b in zip(grads, g_eager, strict=True):
        assert torch.equal(a, b)


def test_torch_func_transforms_take_the_torch_path_with_the_reference_gradient():
    """torch refuses a custom op's autograd formula under torch.func, so the model's entry point
    sends wrapped tensors down the torch path: grad works and is the reference's."""
    net, p, x = _op_args()
    owner = torch.arange(2)
    w = {k: p[k] for k in NAMES}
    with pytest.raises(RuntimeError, match="functorch transforms"):
        torch.func.grad(lambda W: native_resnet_op(x, owner, *(W if k == "W" else w[k] for k in NAMES),
                                                   net.step, 0, 0.0).sum())(p["W"])
    got = torch.func.grad(lambda W: net.forward({**p, "W": W}, x).square().sum())(p["W"])
    leaves = {k: v.clone().requires_grad_(True) for k, v in w.items()}
    (want,) = torch.autograd.grad(reference_resnet(leaves, x, net.step, net.act).square().sum(),
                                  [leaves["W"]])
    assert torch.allclose(got, want, rtol=0, atol=1e-12) and float(want.abs().max()) > 1e-3


def test_the_op_without_a_library_says_how_to_get_the_torch_path(monkeypatch):
    net, p, x = _op_args()
    monkeypatch.setenv("RESDYN_NATIVE", "0")
    with pytest.raises(RuntimeError, match=r"no native library .*falls back to the torch path"):
        native_resnet_op(x, torch.arange(2), *(p[k] for k in NAMES), net.step, 0, 0.0)
    out = net.forward(p, x)  # the model's entry point takes the torch path instead
    assert not any("native_resnet" in n for n in graph_nodes(out))


def test_the_build_command_rejects_anything_but_build():
    run = subprocess.run([sys.executable, "-m", "resdyn.models.native", "bulid"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "usage: python -m resdyn.models.native build" in run.stderr


def test_the_build_command_builds_into_the_cache(tmp_path):
    """One dtype's libraries through the command's code path (all of them take ~10 s)."""
    cache = tmp_path / "cache"
    code = ("import sys, torch; from resdyn.models import native; "
            "paths = native.build_all((torch.float32,)); print(len(paths)); "
            "sys.exit(len(paths) != 5)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "RESDYN_NATIVE_CACHE": str(cache)})
    assert run.returncode == 0, run.stderr
    libs = sorted(cache.glob("*.so"))
    assert sorted(p.name.split("_")[2] for p in libs) == ["nv1", "nv16", "nv2", "nv4", "nv8"]
    assert all(not stat.S_IMODE(p.stat().st_mode) & 0o022 for p in libs)
    assert run.stderr.count("building the native ResNet kernel") == 5  # one line each
