"""Tiny MNIST- and CIFAR-format files for tests, written in the exact byte layout of the real ones.

    write_mnist(root)            -> ROOT/MNIST/raw/*-idx?-ubyte.gz (or uncompressed)
    write_cifar(root, 'cifar10') -> ROOT/cifar-10-python.tar.gz and ROOT/cifar-10-batches-py/*
    write_cifar(root, 'cifar100')-> ROOT/cifar-100-python.tar.gz and ROOT/cifar-100-python/*

Each returns the manifest ``{relative path: md5}`` of what it wrote, to be injected into the
loaders (``load(name, root, manifest=m)`` or ``with use_manifest(m): ...``), so the generated files
go through the same checksum path as the real ones. CIFAR batches are pickled as Python 2 wrote
them (protocol 2, BINSTRING text, ``numpy.core.multiarray._reconstruct``), and gzip streams carry
mtime 0, so the same arguments always give the same bytes.

Images are learnable: class c's image is a fixed random template T_c (from the
``(c, 'fake/template')`` stream) blended with noise, x = round(0.7 T_c + 0.3 U), U uniform in
0..255. Labels are skewed (p_c proportional to c + 1), with every class present when n >= classes.
"""

from __future__ import annotations

import gzip as _gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import torch

from .._seeds import generator_for
from .formats import dumps_like_cifar, write_idx
from .integrity import md5_bytes

__all__ = [
    "CIFAR10_CLASSES",
    "cifar_arrays",
    "cifar_files",
    "fake_images",
    "mnist_arrays",
    "mnist_files",
    "write_cifar",
    "write_files",
    "write_mnist",
]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck"]


def _labels(n: int, classes: int, g: torch.Generator) -> np.ndarray:
    p = torch.arange(1, classes + 1, dtype=torch.float64)
    y = torch.multinomial(p / p.sum(), n, replacement=True, generator=g)
    y[: min(n, classes)] = torch.arange(min(n, classes))
    return y.numpy().astype(np.uint8 if classes <= 256 else np.int64)


def fake_images(labels: np.ndarray, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """uint8 images of ``shape`` per label: round(0.7 T_label + 0.3 noise) (see module doc)."""
    g = generator_for(seed, "fake/noise")
    noise = torch.randint(0, 256, (len(labels), *shape), generator=g, dtype=torch.int64)
    templates = {int(c): torch.randint(0, 256, shape, generator=generator_for(int(c), "fake/template"),
                                       dtype=torch.int64) for c in np.unique(labels)}
    out = torch.stack([templates[int(c)] for c in labels]) if len(labels) else noise
    return torch.round(0.7 * out + 0.3 * noise).clamp(0, 255).to(torch.uint8).numpy()


def mnist_arrays(n_train: int = 200, n_test: int = 100, seed: int = 0, size: int = 28
                 ) -> dict[str, np.ndarray]:
    """train_images (n, size, size), train_labels (n,), test_images, test_labels, all uint8."""
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = _labels(n, 10, generator_for(seed, f"fake/mnist/{split}/labels"))
        out[f"{split}_images"] = fake_images(y, (size, size), seed + (0 if split == "train" else 1))
        out[f"{split}_labels"] = y
    return out


def mnist_files(n_train: int = 200, n_test: int = 100, seed: int = 0, gzip: bool = True,
                size: int = 28) -> dict[str, bytes]:
    """{relative path: bytes} of the four IDX files, as ROOT/MNIST/raw holds them."""
    a = mnist_arrays(n_train, n_test, seed, size)
    names = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
    files = {}
    for key, fname in names.items():
        raw = write_idx(a[key])
        rel = f"MNIST/raw/{fname}"
        files[rel + ".gz" if gzip else rel] = _gzip.compress(raw, mtime=0) if gzip else raw
    return files


def cifar_arrays(name: str = "cifar10", n_train: int = 100, n_test: int = 50, seed: int = 0
                 ) -> dict[str, np.ndarray]:
    """train_data (n, 3072) uint8 rows as CIFAR stores them, train_labels (n,) int64 (fine labels
    for cifar100, whose coarse label is fine // 5), and the same for test."""
    classes = 10 if name == "cifar10" else 100
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = _labels(n, classes, generator_for(seed, f"fake/{name}/{split}/labels")).astype(np.int64)
        x = fake_images(y, (3, 32, 32), seed + (0 if split == "train" else 1))
        out[f"{split}_data"] = x.reshape(n, 3072)
        out[f"{split}_labels"] = y
    return out


def cifar_files(name: str = "cifar10", n_train: int = 100, n_test: int = 50, seed: int = 0,
                archive: bool = True, extracted: bool = True) -> dict[str, bytes]:
    """{relative path: bytes}: the .tar.gz archive and/or the extracted batches."""
    if name not in ("cifar10", "cifar100"):
        raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
    a = cifar_arrays(name, n_train, n_test, seed)
    members: dict[str, bytes] = {}
    if name == "cifar10":
        folder, arch = "cifar-10-batches-py", "cifar-10-python.tar.gz"
        parts = np.array_split(np.arange(n_train), 5)
        for i, idx in enumerate(parts, 1):
            members[f"{folder}/data_batch_{i}"] = dumps_like_cifar({
                "batch_label": f"training batch {i} of 5", "labels": a["train_labels"][idx].tolist(),
                "data": a["train_data"][idx], "filenames": [f"img_{j:05d}.png" for j in idx]})
        members[f"{folder}/test_batch"] = dumps_like_cifar({
            "batch_label": "testing batch 1 of 1", "labels": a["test_labels"].tolist(),
            "data": a["test_data"], "filenames": [f"test_{j:05d}.png" for j in range(n_test)]})
        members[f"{folder}/batches.meta"] = dumps_like_cifar({
            "num_cases_per_batch": 10000, "label_names": CIFAR10_CLASSES, "num_vis": 3072})
    else:
        folder, arch = "cifar-100-python", "cifar-100-python.tar.gz"
        for split in ("train", "test"):
            y = a[f"{split}_labels"]
            members[f"{folder}/{split}"] = dumps_like_cifar({
                "filenames": [f"{split}_{j:05d}.png" for j in range(len(y))],
                "batch_label": f"{split}ing batch 1 of 1", "fine_labels": y.tolist(),
                "coarse_labels": (y // 5).tolist(), "data": a[f"{split}_data"]})
        members[f"{folder}/meta"] = dumps_like_cifar({
            "fine_label_names": [f"fine_{c:02d}" for c in range(100)],
            "coarse_label_names": [f"coarse_{c:02d}" for c in range(20)]})
    files: dict[str, bytes] = {}
    if archive:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for rel, data in {f"{folder}/readme.html": b"<html>fake</html>\n", **members}.items():
                info = tarfile.TarInfo(rel)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
        files[arch] = _gzip.compress(buf.getvalue(), mtime=0)
    if extracted:
        files.update(members)
    return files


def write_files(root: str | Path, files: dict[str, bytes]) -> dict[str, str]:
    """Write ``files`` ({relative path: bytes}) under ``root``; return {relative path: md5}."""
    base = Path(root)
    out = {}
    for rel, data in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[rel] = md5_bytes(data)
    return out


def write_mnist(root: str | Path, n_train: int = 200, n_test: int = 100, seed: int = 0,
                gzip: bool = True, size: int = 28) -> dict[str, str]:
    """Write MNIST-format files under ``root``; return their manifest {relative path: md5}."""
    return write_files(root, mnist_files(n_train, n_test, seed, gzip, size))


def write_cifar(root: str | Path, name: str = "cifar10", n_train: int = 100, n_test: int = 50,
                seed: int = 0, archive: bool = True, extracted: bool = True) -> dict[str, str]:
    """Write CIFAR-format files under ``root``; return the manifest {relative path: md5}, which
    always includes the batches' md5s (needed to check them inside the archive too)."""
    files = cifar_files(name, n_train, n_test, seed, archive=archive, extracted=extracted)
    manifest = write_files(root, files)
    if not extracted:
        members = cifar_files(name, n_train, n_test, seed, archive=False, extracted=True)
        manifest.update({rel: md5_bytes(data) for rel, data in members.items()})
    return manifest
