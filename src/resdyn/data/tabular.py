"""Data sets shipped with scikit-learn (no download): the 8x8 digits, breast cancer, wine.

Each has a fixed test split, chosen once and for all as the stratified sample of the given size
drawn by :func:`resdyn.data.sampling.stratified_indices` from the ``(0, '<name>/test-split')``
stream (class proportions of the test set follow the whole set to within one); the remaining
rows, in their original order, are the training pool.

digits: 1797 images of 8x8 pixels, each pixel the count (0..16) of set pixels in a 4x4 block of
a 32x32 bitmap (UCI optdigits). Kept as uint8 counts (N, 1, 8, 8); ``mean``/``std`` are the
pool's pixel mean and standard deviation in units of count / 255, the units
:meth:`Dataset.prepare` works in, so ``prepare`` returns the standardised counts
(v - mean_v) / std_v exactly. Default split: 597 test images, 1200 in the pool.

breast_cancer: 569 x 30 real features, 2 classes (212 malignant = 0, 357 benign = 1); default
169 test rows, 400 in the pool. wine: 178 x 13 real features, 3 cultivars; default 58 test rows,
120 in the pool. Features are float64; ``mean``/``std`` (shape (d,)) are the pool's per-feature
mean and population standard deviation, so ``prepare`` standardises with pool statistics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import Dataset
from .files import channel_stats
from .sampling import stratified_indices

__all__ = ["TABULAR_SIZES", "load_sklearn"]

# name -> (total rows, default test size)
TABULAR_SIZES = {"digits": (1797, 597), "breast_cancer": (569, 169), "wine": (178, 58)}


def _bunch(name: str) -> Any:
    from sklearn import datasets

    return {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer,
            "wine": datasets.load_wine}[name]()


def split_rows(y: torch.Tensor, name: str, test_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool rows, test rows) of the fixed split of ``name``, both sorted ascending."""
    test = stratified_indices(y, test_size, 0, stream=f"{name}/test-split")
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[test] = False
    return torch.nonzero(mask).flatten(), test


def load_sklearn(name: str, test_size: int | None = None) -> Dataset:
    """``digits``, ``breast_cancer`` or ``wine`` with its fixed split (see the module doc)."""
    total, default_test = TABULAR_SIZES[name]
    test_size = default_test if test_size is None else test_size
    if not 1 <= test_size <= total - 1:
        raise ValueError(f"{name}: test_size must lie in 1..{total - 1}, got {test_size}")
    b = _bunch(name)
    y_all = torch.as_tensor(np.asarray(b.target), dtype=torch.long)
    pool, test = split_rows(y_all, name, test_size)
    classes = [str(c) for c in b.target_names]
    meta: dict[str, Any] = {
        "pool_size": len(pool), "test_size": len(test), "classes": classes,
        "split": f"fixed stratified split: test = stratified_indices(y, {test_size}, 0, "
                 f"stream='{name}/test-split'), pool = the other rows in order",
        "pool_rows": pool.tolist(), "test_rows": test.tolist(),
    }
    if name == "digits":
        x_all = torch.as_tensor(np.asarray(b.images), dtype=torch.float64)
        if x_all.min() < 0 or x_all.max() > 16 or not torch.equal(x_all, x_all.round()):
            raise ValueError("scikit-learn's digits are expected to hold integer counts 0..16")
        x_all = x_all.to(torch.uint8).reshape(-1, 1, 8, 8)
        mean, std = channel_stats(x_all[pool])
        meta.update(input="1x8x8 uint8 pixel counts 0..16 (not 0..255)",
                    source="scikit-learn load_digits (UCI optdigits test part), shipped with "
                           "scikit-learn",
                    normalisation="pool pixel mean/std in count/255 units; prepare() gives "
                                  "standardised counts")
    else:
        x_all = torch.as_tensor(np.asarray(b.data), dtype=torch.float64)
        xp = x_all[pool]
        mean, std = xp.mean(0), xp.std(0, correction=0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        meta.update(input=f"{x_all.shape[1]} float64 features", features=list(b.feature_names),
                    source=f"scikit-learn load_{name} (UCI), shipped with scikit-learn",
                    normalisation="per-feature pool mean / population std")
    return Dataset(name, x_all[pool], y_all[pool], x_all[test], y_all[test], len(classes), mean,
                   std, meta=meta)
