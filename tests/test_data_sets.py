"""The registry, the generators, the fixed splits, normalisation and subsampling by S."""

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from resdyn.data import DATASETS, Dataset, load, subsample
from resdyn.data.sampling import class_quotas, class_sequence
from resdyn.data.synthetic import teacher_weights
from resdyn.models import ResNet, init_params
from resdyn.training.engine import TrainConfig, train


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load("digits")


def test_registry_names_every_required_set():
    for name in ("two_spirals", "circles", "teacher", "digits", "breast_cancer", "wine", "mnist",
                 "fashion-mnist", "cifar10", "cifar100"):
        assert name in DATASETS


def test_unknown_name_and_option_are_value_errors_that_name_them():
    with pytest.raises(ValueError, match=r"unknown data set 'mnits'.*two_spirals.*cifar100"):
        load("mnits")
    with pytest.raises(ValueError, match=r"unknown option 'turn'.*allowed: pool_size, test_size, "
                                         r"seed, draw, standardise, turns, noise"):
        load("two_spirals", turn=2)
    with pytest.raises(ValueError, match=r"option noise must be a finite number >= 0, got -1"):
        load("circles", noise=-1)
    with pytest.raises(ValueError, match=r"option labels must be one of 'fine', 'coarse'"):
        load("cifar100", labels="medium")
    with pytest.raises(ValueError, match=r"unknown option 'manifest'.*allowed: test_size"):
        load("digits", manifest={})


# ------------------------------------------------------------------------------- synthetic


def test_synthetic_sets_are_fixed_by_default_and_pool_ignores_test_size():
    a, b = load("two_spirals"), load("two_spirals", test_size=7)
    assert (len(a.y), len(a.y_test), len(b.y_test)) == (4096, 2000, 7)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert torch.equal(a.x_test[:7], load("two_spirals").x_test[:7])
    c = load("two_spirals", seed=1)
    assert not torch.equal(a.x, c.x)
    # Pool and test come from independent streams: no pool point reappears in the test set.
    assert torch.cdist(a.x, a.x_test).min() > 0


def test_two_spirals_points_lie_on_their_spiral_when_noise_is_zero():
    d = load("two_spirals", noise=0.0, turns=1.5, pool_size=500, test_size=1)
    r = d.x.norm(dim=1)
    phi = 2 * math.pi * 1.5 * r + math.pi * d.y
    expected = r[:, None] * torch.stack([torch.cos(phi), torch.sin(phi)], 1)
    assert torch.allclose(d.x, expected, atol=1e-12)
    assert d.y.tolist()[:4] == [0, 1, 0, 1]


def test_circles_radii_are_one_and_factor_when_noise_is_zero():
    d = load("circles", noise=0.0, factor=0.3, pool_size=200, test_size=1)
    r = d.x.norm(dim=1)
    assert torch.allclose(r[d.y == 0], torch.ones(100, dtype=torch.float64))
    assert torch.allclose(r[d.y == 1], torch.full((100,), 0.3, dtype=torch.float64))


def test_teacher_labels_are_the_argmax_of_the_teacher():
    d = load("teacher", dim=5, hidden=7, classes=3, pool_size=300, test_size=100)
    w = teacher_weights(5, 7, 3, 0)
    for x, y in ((d.x, d.y), (d.x_test, d.y_test)):
        assert torch.equal((torch.tanh(x @ w["W"].T + w["b"]) @ w["a"].T).argmax(1), y)
    assert d.num_classes == 3 and set(d.y.tolist()) <= {0, 1, 2}
    assert d.x.shape == (300, 5)


# ------------------------------------------------------------------------- scikit-learn sets


def test_digits_split_is_fixed_disjoint_stratified_and_true_to_scikit_learn(digits):
    b = load_digits()
    pool, test = digits.meta["pool_rows"], digits.meta["test_rows"]
    assert (len(pool), len(test)) == (1200, 597)
    assert sorted(pool + test) == list(range(1797))
    assert digits.x.shape == (1200, 1, 8, 8) and digits.x.dtype == torch.uint8
    assert np.array_equal(digits.x_test.reshape(597, 64).numpy(), b.data[test].astype(np.uint8))
    assert np.array_equal(digits.y.numpy(), b.target[pool])
    counts = np.bincount(b.target, minlength=10)
    per_class = np.bincount(b.target[test], minlength=10)
    assert np.all(np.abs(per_class - 597 * counts / 1797) < 1)
    assert load("digits").meta["test_rows"] == test  # fixed


def test_digits_normalisation_standardises_pool_pixels(digits):
    x = digits.prepare(digits.x, torch.float64, "cpu")
    assert digits.mean.shape == (1, 1, 1) and digits.std.shape == (1, 1, 1)
    assert abs(float(x.mean())) < 1e-12 and abs(float(x.std(correction=0)) - 1) < 1e-12
    raw = digits.x.double()
    assert torch.allclose(x, (raw - raw.mean()) / raw.std(correction=0))


@pytest.mark.parametrize(("name", "n_pool", "n_test", "d", "k"),
                         [("breast_cancer", 400, 169, 30, 2), ("wine", 120, 58, 13, 3)])
def test_tabular_sets_are_standardised_with_pool_statistics(name, n_pool, n_test, d, k):
    data = load(name)
    assert data.x.shape == (n_pool, d) and data.x_test.shape == (n_test, d)
    assert data.num_classes == k
    z = data.prepare(data.x, torch.float64, "cpu")
    assert torch.allclose(z.mean(0), torch.zeros(d, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(z.std(0, correction=0), torch.ones(d, dtype=torch.float64))
    zt = data.prepare(data.x_test, torch.float64, "cpu")
    assert not torch.allclose(zt.mean(0), torch.zeros(d, dtype=torch.float64), atol=1e-3)


# ---------------------------------------------------------------------------- subsampling


def _toy(counts: list[int]) -> Dataset:
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    x = torch.arange(len(y), dtype=torch.float64)[:, None]
    return Dataset("toy", x, y, x[:1], y[:1], len(counts))


def test_class_sequence_meets_quota_at_every_prefix():
    rng = np.random.default_rng(0)
    for _ in range(60):
        counts = rng.integers(1, 50, size=rng.integers(1, 12))
        N = counts.sum()
        prefix = np.cumsum(np.eye(len(counts), dtype=np.int64)[class_sequence(counts)], 0)
        t = np.arange(1, N + 1)[:, None]
        assert np.all(prefix >= (t * counts) // N)
        assert np.all(prefix <= -((-t * counts) // N))
    assert class_quotas([3, 1], 4).tolist() == [3, 1]


def test_subsample_follows_pool_proportions_not_balance():
    d = _toy([900, 100])
    for S in (10, 100, 250, 999):
        idx = subsample(d, S, seed=3)
        counts = torch.bincount(d.y[idx], minlength=2).tolist()
        assert counts[0] in (math.floor(0.9 * S), math.ceil(0.9 * S)) and sum(counts) == S
    assert torch.bincount(d.y[subsample(d, 100, 0)]).tolist() == [90, 10]


def test_subsamples_are_nested_deterministic_sorted_and_seed_dependent(digits):
    sizes = [1, 7, 128, 256, 500, 1000, 1200]
    for seed in (0, 5):
        samples = [subsample(digits, S, seed) for S in sizes]
        for small, big in itertools.pairwise(samples):
            assert set(small.tolist()) <= set(big.tolist())
        for S, idx in zip(sizes, samples, strict=True):
            assert len(idx) == S == len(set(idx.tolist()))
            assert idx.dtype == torch.long and torch.equal(idx, idx.sort().values)
            assert torch.equal(idx, subsample(digits, S, seed))
        assert torch.equal(samples[-1], torch.arange(1200))
    assert not torch.equal(subsample(digits, 128, 0), subsample(digits, 128, 1))
    # Stratified on the real pool: per-class counts within one of S n_c / N.
    counts = torch.bincount(digits.y, minlength=10).double()
    for S in (10, 128, 1000):
        got = torch.bincount(digits.y[subsample(digits, S, 2)], minlength=10).double()
        assert torch.all((got - S * counts / 1200).abs() < 1)


def test_subsample_is_uniform_within_a_class():
    d = _toy([60, 40])
    hits = torch.zeros(100)
    for seed in range(400):
        hits[subsample(d, 10, seed)] += 1
    # Quotas 6 of 60 and 4 of 40: each point is picked with probability 0.1, 40 times in 400 on
    # average (binomial sd 6); a sampler favouring some points (e.g. the first of each class)
    # would leave others at 0.
    assert hits.min() > 15 and hits.max() < 70


def test_subsample_rejects_too_large_s_naming_both_numbers(digits):
    with pytest.raises(ValueError, match=r"S = 1201 .*'digits' \(1200 samples\)"):
        subsample(digits, 1201, 0)
    with pytest.raises(ValueError, match=r"S must be an integer >= 1"):
        subsample(digits, 0, 0)


# --------------------------------------------------------------------------- it learns


def test_digits_trains_a_discrete_resnet_to_090_test_accuracy_at_s_1000(digits):
    seeds = [0, 1]
    model = ResNet(in_dim=64, out_dim=10, width=32, depth=4)
    idx = [subsample(digits, 1000, s) for s in seeds]
    res = train(model, init_params(model, seeds), digits, idx, lr=1e-2, config=TrainConfig(steps=200),
                seeds=seeds)
    assert torch.all(res.metrics["test_acc"] >= 0.9), res.metrics["test_acc"]
    assert torch.all(res.metrics["train_acc"] >= 0.99)
