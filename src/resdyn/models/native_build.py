"""Which library of the native ResNet kernel runs a network, and where it comes from: the
toolchain, the build, the on-disk cache and its pruning, the libraries loaded in this process
(:func:`resnet_library`), and the set-up command (``python -m resdyn.models.native build``,
:func:`main`).

**Builds.** The widths d, m, p, k and the depth L are run-time arguments of the kernel; a
library is specialised only on the dtype and on NV, the number of 64-byte vectors that hold a row
of max(m, p) numbers, rounded up to a power of two (:func:`vectors_for`): float32 NV in
{1, 2, 4, 8, 16}, float64 NV in {1, 2, 4, 8, 16, 32}, eleven libraries in all for every width up
to :data:`MAX_WIDTH`. ``python -m resdyn.models.native build`` (run by ``scripts/setup.sh``)
builds them all at set-up; otherwise one is built on first use (about a second, with one line on
stderr saying so). They are built with the system C compiler (``$CC``, else ``cc``, ``gcc`` or
``clang``) for this machine's instruction set (``-march=native``) and cached under
``$RESDYN_NATIVE_CACHE`` (default ``~/.cache/resdyn/native``), keyed by the source, the flags,
the compiler and this CPU's feature flags, so that machines of a cluster sharing a home directory
each get their own build. The cache keeps the :data:`MAX_CACHED` most recently used libraries and
removes older ones (and libraries of earlier layouts of the cache) after each build.

**Trust.** Compiled code is loaded only when :mod:`resdyn.models.native_trust` trusts it (its
folder and file, and the sha256 recorded at the build). Anything else (a planted library, one
writable by others, a damaged file) is rebuilt, with one warning line naming the file and what
was wrong with it. A trusted file that still does not load (damaged under a matching record, or
built for another layout of the kernel's entry points) is rebuilt once; if the new build does not
load either, one warning gives the loader's error and that library's networks run on the torch
path (the others keep the kernel).

**Failures.** No C compiler: one warning, the torch path everywhere (``RESDYN_NATIVE=0`` asks for
that). A compiler that rejects the source: one warning with its error. A compiler without OpenMP
(Apple's clang): the kernel is built without it and a warning says that it runs on one thread.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

from .native_library import NativeResNet, OpenedLibrary, load_library, say_once
from .native_trust import (
    UntrustedError,
    check_folder,
    digest_path,
    plain_own_file,
    recorded_digest,
    trusted_library,
)

__all__ = ["DTYPES", "MAX_CACHED", "MAX_IO", "MAX_WIDTH", "VECTOR_BYTES", "all_vectors",
           "build_all", "cache_dir", "compiler", "enabled", "loaded_libraries", "main",
           "resnet_library", "supported", "toolchain", "vectors_for"]

SOURCE = Path(__file__).with_name("csrc") / "resnet.c"
FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math",
         "-fPIC", "-shared")
#: Threads come from OpenMP: linked to libgomp.so.1, the library shares the runtime torch has
#: loaded (the loader matches the soname), so the kernel's team is torch's awake intra-op pool.
#: A compiler without OpenMP builds a single-threaded kernel (and says so).
OPENMP = ("-fopenmp",)
#: Widest state m or hidden width p run natively (a row's vectors live in registers).
MAX_WIDTH = 256
#: Largest input size d or output size k run natively.
MAX_IO = 16384
#: Libraries kept in the cache folder; the least recently used beyond these are removed.
MAX_CACHED = 24
#: The dtypes the kernel has, with their C type.
DTYPES = {torch.float32: "float", torch.float64: "double"}
#: Bytes of one vector of a row.
VECTOR_BYTES = 64
_NAME = re.compile(r"resnet_(float|double)_nv\d+_[0-9a-f]{16}\.so")

_lock = threading.Lock()
_libs: dict[tuple[torch.dtype, int], NativeResNet | None] = {}
_failure: str | None = None  # why no library can be built in this process (no compiler, cache)


def enabled() -> bool:
    """False when ``RESDYN_NATIVE=0`` (the torch path everywhere)."""
    return os.environ.get("RESDYN_NATIVE", "1").strip() not in ("0", "false", "no", "off")


def vectors_for(dtype: torch.dtype, m: int, p: int) -> int:
    """NV, the library a network of state width m and hidden width p runs on: the 64-byte vectors
    a row of max(m, p) numbers takes, rounded up to a power of two."""
    lanes = VECTOR_BYTES // torch.empty((), dtype=dtype).element_size()
    need = -(-max(m, p) // lanes)
    return 1 << (need - 1).bit_length()


def all_vectors(dtype: torch.dtype) -> list[int]:
    """Every NV that a width up to MAX_WIDTH needs for ``dtype``."""
    return sorted({vectors_for(dtype, w, w) for w in range(1, MAX_WIDTH + 1)})


# -- which library runs ---------------------------------------------------------------------------

def supported(dtype: torch.dtype, d: int, m: int, p: int, k: int) -> bool:
    """Whether the kernel can compute a network of these widths in ``dtype`` (enabled, a dtype it
    has, widths within its limits); says nothing of whether a library is built."""
    return (enabled() and dtype in DTYPES and 1 <= m <= MAX_WIDTH and 1 <= p <= MAX_WIDTH
            and 1 <= d <= MAX_IO and 1 <= k <= MAX_IO)


def resnet_library(dtype: torch.dtype, d: int, m: int, p: int, k: int) -> NativeResNet | None:
    """The library that runs a network of these widths, built on first use; None when it cannot
    be used here (disabled, an unsupported dtype or width, or no library could be built or
    loaded: warned once, with the reason)."""
    if not supported(dtype, d, m, p, k):
        return None
    key = (dtype, vectors_for(dtype, m, p))
    with _lock:
        if key not in _libs:
            _libs[key] = _build(*key)
        return _libs[key]


def loaded_libraries() -> list[NativeResNet]:
    """The libraries loaded in this process (by :func:`resnet_library`)."""
    return [lib for lib in _libs.values() if lib is not None]


# -- the toolchain and the cache folder -----------------------------------------------------------

def compiler() -> str | None:
    """The C compiler a build uses: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH (its
    full path); None when there is none."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@functools.cache
def toolchain(cc: str) -> tuple[str, str]:
    """(the compiler's ``--version`` output, this CPU's feature flags): what a build depends on
    besides the source and the flags (``-march=native``). Once per compiler and process."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    cpu = platform.machine() + platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                cpu = line
                break
    except OSError:
        pass
    return version, cpu


def cache_dir() -> Path:
    """Where built libraries are kept: ``$RESDYN_NATIVE_CACHE``, else ``~/.cache/resdyn/native``
    (``$XDG_CACHE_HOME`` respected)."""
    if os.environ.get("RESDYN_NATIVE_CACHE"):
        return Path(os.environ["RESDYN_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "resdyn" / "native"


# -- building -------------------------------------------------------------------------------------

def _compile(cc: str, defines: list[str], target: Path) -> str | None:
    """Build the library into ``target`` with its sha256 beside it; the compiler's complaint
    when it was built without OpenMP, else None. Built beside the target (0700) and renamed into
    place: processes building the same library at once each rename a complete file; the record
    is written after the library, so a library never has another's."""
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=target.parent)
    os.close(fd)
    no_openmp = None
    try:
        for extra in (OPENMP, ()):
            run = subprocess.run([cc, *FLAGS, *extra, *defines, "-o", tmp, str(SOURCE)],
                                 capture_output=True, text=True, timeout=300)
            if run.returncode == 0:
                break
            no_openmp = " ".join(run.stderr.split())[-300:] or f"exit status {run.returncode}"
        else:
            raise RuntimeError(f"{cc} could not compile {SOURCE.name}: "
                               f"{' '.join(run.stderr.split())[-2000:]}")
        os.chmod(tmp, 0o700)
        digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        fd, tmp_digest = tempfile.mkstemp(suffix=".sha256.tmp", dir=target.parent)
        with os.fdopen(fd, "w") as f:
            f.write(digest + "\n")
        os.replace(tmp, target)
        os.replace(tmp_digest, digest_path(target))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return no_openmp


def _open_trusted(cc: str, defines: list[str], target: Path, fresh: bool) -> OpenedLibrary:
    """The trusted library at ``target``: the cached one (unless ``fresh``), or a new build when
    there is none or the cached one is not trusted (one warning line naming why)."""
    if os.path.lexists(target) and not fresh:
        try:
            return OpenedLibrary(*trusted_library(target))
        except UntrustedError as err:
            # A library of this user without a record (built before records were kept) is
            # rebuilt quietly; anything else says what was found.
            if recorded_digest(target) is not None or not plain_own_file(target):
                warnings.warn(f"resdyn: not loading the native ResNet library: {err}; it is "
                              "rebuilt", RuntimeWarning, stacklevel=5)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    print(f"resdyn: building the native ResNet kernel ({target.name}); once per machine, about "
          "a second", file=sys.stderr, flush=True)
    no_openmp = _compile(cc, defines, target)
    _prune(target.parent, keep=target)
    return OpenedLibrary(*trusted_library(target),
                         no_openmp=f"{cc} rejected -fopenmp: {no_openmp}"
                         if no_openmp is not None else None)


def _prune(folder: Path, keep: Path) -> None:
    """Bound the cache: libraries of an earlier naming of the cache, and all but the MAX_CACHED
    most recently used, are removed with their records, as are build leftovers over an hour old
    and records without a library. ``keep`` (the library just built) always stays."""
    now = time.time()
    libraries = []
    for path in folder.iterdir():
        try:
            info = path.lstat()
        except OSError:
            continue
        name = path.name
        if name.endswith(".tmp"):
            stale = now - info.st_mtime > 3600
        elif name.endswith(".sha256"):
            stale = not os.path.lexists(path.with_name(name[:-len(".sha256")]))
        elif name.startswith("resnet_") and name.endswith(".so"):
            stale = _NAME.fullmatch(name) is None
            if not stale and path != keep:
                libraries.append((info.st_mtime, path))
        else:
            continue
        if stale:
            _remove(path)
    libraries.sort(reverse=True)
    for _, path in libraries[MAX_CACHED - 1:]:
        _remove(path)


def _remove(path: Path) -> None:
    for p in (path, digest_path(path)) if path.suffix == ".so" else (path,):
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except FileNotFoundError:
            pass


def _target(cc: str, dtype: torch.dtype, nv: int) -> tuple[Path, list[str]]:
    """Where the library of (dtype, nv) built by ``cc`` lives, and its -D flags."""
    defines = [f"-DRS_NV={nv}"] + (["-DRS_DOUBLE"] if dtype == torch.float64 else [])
    key = "\0".join([SOURCE.read_text(), *FLAGS, *OPENMP, *defines, cc, *toolchain(cc)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / f"resnet_{DTYPES[dtype]}_nv{nv}_{digest}.so", defines


def _build(dtype: torch.dtype, nv: int) -> NativeResNet | None:
    """The loaded library of (dtype, nv), or None with one warning that names the cause."""
    global _failure
    if _failure is not None:
        return None
    cc = compiler()
    if cc is None:
        _failure = "no C compiler found ($CC, cc, gcc or clang)"
        say_once(f"resdyn: the native ResNet kernel is not built ({_failure}); the two-layer "
                 "ResNet runs on the torch path, two to three times slower. Install a C compiler "
                 "or set CC to one.", stacklevel=4)
        return None
    try:
        target, defines = _target(cc, dtype, nv)
        check_folder(target.parent)
        return _load_or_rebuild(cc, defines, target, dtype, nv)
    except UntrustedError as err:
        _failure = str(err)
        say_once(f"resdyn: the native ResNet is not loaded ({_failure}); the two-layer ResNet "
                 "runs on the torch path.", stacklevel=4)
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        say_once(f"resdyn: the native ResNet kernel for {DTYPES[dtype]} rows of {nv} vectors "
                 f"is not used ({' '.join(str(err).split())}); those networks run on the torch "
                 "path.", stacklevel=4)
    return None


def _load_or_rebuild(cc: str, defines: list[str], target: Path, dtype: torch.dtype,
                     nv: int) -> NativeResNet:
    """The library at ``target`` loaded; a trusted file that does not load (damaged under a
    matching record, or stale) is rebuilt once, and a second failure is raised with both causes."""
    opened = _open_trusted(cc, defines, target, fresh=False)
    try:
        return load_library(target, dtype, nv, opened)
    except (OSError, AttributeError, RuntimeError) as first:
        # The descriptor stays open: were its number reused for the new build, the loader would
        # hand back the library it already mapped under that name (/proc/self/fd/N).
        warnings.warn(f"resdyn: the cached native ResNet library {target} does not load "
                      f"({' '.join(str(first).split())}); it is rebuilt", RuntimeWarning,
                      stacklevel=4)
    opened = _open_trusted(cc, defines, target, fresh=True)
    try:
        return load_library(target, dtype, nv, opened)
    except (OSError, AttributeError, RuntimeError) as second:
        raise RuntimeError(f"the library {target} was rebuilt and still does not load: "
                           f"{second}") from None


# -- set-up ---------------------------------------------------------------------------------------

def build_all(dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)) -> list[Path]:
    """Build (or find in the cache) every library the kernel can use, for set-up: the paths of
    those loaded. ``python -m resdyn.models.native build``."""
    built = []
    for dtype in dtypes:
        for nv in all_vectors(dtype):
            m = nv * VECTOR_BYTES // torch.empty((), dtype=dtype).element_size()
            lib = resnet_library(dtype, 1, min(m, MAX_WIDTH), 1, 1)
            if lib is not None:
                built.append(lib.path)
    return built


def main(argv: list[str]) -> int:
    """``python -m resdyn.models.native build``: build every library into the cache; 0 when all
    eleven are built, 1 when some are not (the warnings say why), 2 for other arguments."""
    if argv != ["build"]:
        print("usage: python -m resdyn.models.native build", file=sys.stderr)
        return 2
    paths = build_all()
    for path in paths:
        print(path)
    want = sum(len(all_vectors(t)) for t in DTYPES)
    if len(paths) != want:
        print(f"resdyn: {want - len(paths)} of {want} native ResNet libraries were not built (see "
              "the warnings above); the torch path runs for their widths", file=sys.stderr)
        return 1
    return 0
