"""MNIST, Fashion-MNIST and CIFAR-10/100 read from a data root laid out as torchvision does.

    ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]   (gzip or not)
    ROOT/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    ROOT/cifar-10-python.tar.gz                                          (read if not extracted)
    ROOT/cifar-100-python/{train, test, meta}
    ROOT/cifar-100-python.tar.gz

Every file is read through :func:`resdyn.data.integrity.read_verified` (its md5 or sha256
against the manifest first), IDX files bounded by the sizes their headers declare (gzip ones
decompressed no further), and pickles through the restricted unpickler. The official training set is the
pool and the official test set the test set; images stay uint8 (N, C, H, W), and the per-channel
mean and standard deviation of the whole pool, in [0, 1] units, go to ``Dataset.mean``/``std``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import Dataset
from .formats import MAX_IDX_BYTES, gunzip_idx, parse_idx, safe_unpickle, tar_members
from .integrity import (
    FormatError,
    Manifest,
    MissingFileError,
    check_root,
    checksums,
    digest_bytes,
    digest_kind,
    expected_digest,
    fix_command,
    manifest_entry,
    read_verified,
)

__all__ = ["IDX_SETS", "channel_stats", "idx_files", "load_cifar", "load_mnist"]

#: The IDX data sets: torchvision's folder under the root, and the class names.
IDX_SETS: dict[str, dict[str, Any]] = {
    "mnist": {"folder": "MNIST", "title": "MNIST", "classes": [str(i) for i in range(10)]},
    "fashion-mnist": {"folder": "FashionMNIST", "title": "Fashion-MNIST", "classes": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
        "Ankle boot"]},
}


def idx_files(name: str) -> dict[str, str]:
    """The four IDX files of ``name`` ('mnist' or 'fashion-mnist'), {part: path relative to the
    root}, uncompressed names (the gzip form adds '.gz')."""
    folder = IDX_SETS[name]["folder"]
    return {
        "train_images": f"{folder}/raw/train-images-idx3-ubyte",
        "train_labels": f"{folder}/raw/train-labels-idx1-ubyte",
        "test_images": f"{folder}/raw/t10k-images-idx3-ubyte",
        "test_labels": f"{folder}/raw/t10k-labels-idx1-ubyte",
    }


#: The most bytes of a gzip-compressed IDX file read before its checksum is computed.
MAX_GZ_BYTES = MAX_IDX_BYTES + (1 << 20)

CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "archive": "cifar-10-python.tar.gz",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "archive": "cifar-100-python.tar.gz",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
    },
}


def channel_stats(x: Tensor, block: int = 4096) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (population) standard deviation of uint8 images x (N, C, H, W), in
    the units of x / 255, as float64 tensors of shape (C, 1, 1).

    Exact and light on memory: a 256-bin histogram per channel, accumulated over blocks of
    images, gives mean = sum_v v h(v) / n and var = sum_v (v - mean)^2 h(v) / n.
    """
    C = x.shape[1]
    hist = torch.zeros(C, 256, dtype=torch.float64)
    for s in range(0, len(x), block):
        chunk = x[s : s + block]
        for c in range(C):
            hist[c] += torch.bincount(chunk[:, c].reshape(-1).to(torch.int32), minlength=256)
    v = torch.arange(256, dtype=torch.float64) / 255.0
    n = hist.sum(1)
    mean = (hist * v).sum(1) / n
    var = (hist * (v[None, :] - mean[:, None]) ** 2).sum(1) / n
    std = torch.sqrt(var).clamp_min(1e-12)
    return mean.reshape(C, 1, 1), std.reshape(C, 1, 1)


# ------------------------------------------------------------------------------------ MNIST


def _idx_file(root: Path, name: str, relpath: str, ndim: int, manifest: Manifest | None) -> bytes:
    """The bytes of one IDX file of ``name``: the uncompressed file if present (what ``resdyn
    data fetch`` writes), else the .gz (torchvision's download), decompressed no further than its
    header declares; either checked against the manifest first."""
    gz = relpath + ".gz"
    if (root / relpath).is_file():
        return read_verified(root, relpath, name, manifest, max_bytes=MAX_IDX_BYTES)
    if (root / gz).is_file():
        return gunzip_idx(read_verified(root, gz, name, manifest, max_bytes=MAX_GZ_BYTES),
                          str(root / gz), ndim)
    table = checksums(manifest)
    want = table.get(relpath) or table.get(gz) or "unknown"
    raise MissingFileError(f"{name}: missing file {str(root / relpath)!r} (or its gzip form "
                           f"{Path(gz).name!r}), expected checksum {want}; run "
                           f"{fix_command(name, root)}")


def load_mnist(root: str | Path | None, manifest: Manifest | None = None,
               name: str = "mnist") -> Dataset:
    """MNIST (``name='mnist'``) or Fashion-MNIST (``'fashion-mnist'``) from ``root`` (default
    ./data): 60,000 pool and 10,000 test images (N, 1, 28, 28) uint8, labels 0..9.

    Checks each file's checksum, its IDX header (unsigned bytes; 3 dimensions for images, 1 for
    labels; at most :data:`MAX_IDX_BYTES`) and length, that images and labels agree in number and
    that labels lie in 0..9."""
    base = check_root(root, name)
    arrays = {}
    for key, rel in idx_files(name).items():
        ndim = 3 if "images" in key else 1
        arrays[key] = parse_idx(_idx_file(base, name, rel, ndim, manifest), str(base / rel), ndim)
    parts = {}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise FormatError(f"{name}: {split} has {len(images)} images but {len(labels)} labels")
        if labels.size and int(labels.max()) > 9:
            raise FormatError(f"{name}: {split} labels must lie in 0..9, found {int(labels.max())}")
        x = torch.from_numpy(images.copy()).unsqueeze(1)
        parts[split] = (x, torch.from_numpy(labels.astype(np.int64)))
    (x, y), (xt, yt) = parts["train"], parts["test"]
    mean, std = channel_stats(x)
    H, W = x.shape[2:]
    spec = IDX_SETS[name]
    return Dataset(
        name, x, y, xt, yt, 10, mean, std,
        meta=_meta(name, f"1x{H}x{W} uint8 grayscale images (0 = background)", len(y), len(yt),
                   list(spec["classes"]), base, "official training set / official test set",
                   title=spec["title"]),
    )


# ------------------------------------------------------------------------------------ CIFAR


def _cifar_reader(base: Path, name: str, manifest: Manifest | None):
    """A function relpath -> verified bytes, from the extracted folder or else the archive."""
    spec = CIFAR[name]
    folder = base / spec["folder"]
    if folder.is_dir():
        return lambda rel: read_verified(base, rel, name, manifest), f"{spec['folder']}/"
    if (base / spec["archive"]).is_file():
        blob = read_verified(base, spec["archive"], name, manifest)
        wanted = {f"{spec['folder']}/{f}" for f in (*spec["train"], *spec["test"], spec["meta"])}
        members = tar_members(blob, wanted, str(base / spec["archive"]))
        del blob

        def from_archive(rel: str) -> bytes:
            if rel not in members:
                raise FormatError(f"{name}: archive {str(base / spec['archive'])!r} has no member "
                                  f"{rel!r}")
            data, want = members[rel], expected_digest(rel, manifest)
            got = digest_bytes(data, digest_kind(want))
            if got != want:
                raise FormatError(f"{name}: member {rel!r} of {spec['archive']} has checksum "
                                  f"{got}, expected {want}")
            return data

        return from_archive, f"{spec['archive']}:"
    want = checksums(manifest).get(spec["archive"], "unknown")
    raise MissingFileError(
        f"{name}: neither the folder {str(folder)!r} nor the archive "
        f"{str(base / spec['archive'])!r} (md5 {want}) is there; run {fix_command(name, base)}")


def _batch(blob: bytes, rel: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = safe_unpickle(blob, rel)
    if not isinstance(d, dict) or "data" not in d or label_key not in d:
        raise FormatError(f"{rel}: expected a dict with 'data' and {label_key!r}, got "
                          f"{sorted(d) if isinstance(d, dict) else type(d).__name__}")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        raise FormatError(f"{rel}: 'data' must be a uint8 array (N, 3072), got "
                          f"{getattr(data, 'dtype', type(data))} {getattr(data, 'shape', '')}")
    labels = np.asarray(d[label_key], dtype=np.int64)
    if labels.shape != (len(data),):
        raise FormatError(f"{rel}: {len(data)} images but {labels.size} labels")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(root: str | Path | None, name: str, labels: str = "fine",
               manifest: Manifest | None = None) -> Dataset:
    """CIFAR-10 (``name='cifar10'``) or CIFAR-100 (``'cifar100'``, ``labels`` 'fine' = 100
    classes or 'coarse' = 20 superclasses): 50,000 pool and 10,000 test images (N, 3, 32, 32)."""
    base = check_root(root, name)
    spec = CIFAR[name]
    read, where = _cifar_reader(base, name, manifest)
    key = "labels" if name == "cifar10" else f"{labels}_labels"
    parts = {}
    for split in ("train", "test"):
        xs, ys = zip(*(_batch(read(f"{spec['folder']}/{f}"), f"{spec['folder']}/{f}", key)
                       for f in spec[split]), strict=True)
        parts[split] = (torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))
    meta_rel = f"{spec['folder']}/{spec['meta']}"
    meta = safe_unpickle(read(meta_rel), meta_rel)
    names_key = "label_names" if name == "cifar10" else f"{labels}_label_names"
    classes = [str(c) for c in meta.get(names_key, [])] if isinstance(meta, dict) else []
    k = 10 if name == "cifar10" else (100 if labels == "fine" else 20)
    if len(classes) != k:
        raise FormatError(f"{meta_rel}: expected {k} names under {names_key!r}, found {len(classes)}")
    (x, y), (xt, yt) = parts["train"], parts["test"]
    for split, lab in (("train", y), ("test", yt)):
        if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= k):
            raise FormatError(f"{name}: {split} labels must lie in 0..{k - 1}")
    mean, std = channel_stats(x)
    title = "CIFAR-10" if name == "cifar10" else f"CIFAR-100 ({labels} labels)"
    return Dataset(
        name, x, y, xt, yt, k, mean, std,
        meta=_meta(name, "3x32x32 uint8 RGB images", len(y), len(yt), classes, base,
                   "official training batches / official test batch", read_from=where,
                   title=title),
    )


def _meta(name: str, description: str, n_pool: int, n_test: int, classes: list[str], root: Path,
          split: str, **extra: Any) -> dict[str, Any]:
    return {
        "input": description,
        "pool_size": n_pool,
        "test_size": n_test,
        "classes": classes,
        "source": manifest_entry(name)["source"],
        "root": str(root),
        "split": split,
        "normalisation": "per-channel mean/std of the whole pool, in [0, 1] units",
        **extra,
    }
