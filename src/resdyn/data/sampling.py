"""Training subsamples of size S: deterministic, stratified, nested.

Given pool labels with class counts n_c (N = sum n_c) and target size S, the sample takes q_c(S)
points of class c, where q_c(S) is the number of times class c occurs among the first S entries
of one fixed *class sequence* c_1, c_2, ..., c_N. The sequence depends on the counts only, and is
built so that every prefix respects quota:

    floor(S n_c / N) <= q_c(S) <= ceil(S n_c / N)   for every S and every class c,

i.e. class proportions follow the pool's (up to rounding), without forcing balance. It is the
earliest-deadline-first schedule of unit jobs: the j-th item of class c may be placed at step t
once j - 1 < t n_c / N (upper quota, its release) and must be placed by step ceil(j N / n_c)
(lower quota, its deadline); at each step the released item with the earliest deadline goes
(ties: the lower class index). A schedule meeting every release and deadline exists (Balinski and
Young's quota method is house-monotone and satisfies quota), and for unit jobs EDF finds one.

Within class c, points are taken in the order of one random permutation of the pool drawn from
the ``(seed, 'subsample')`` stream of :func:`resdyn._seeds.generator_for`: the sample of
size S is the first q_c(S) class-c points in that order, for every c. Hence (S, seed) always gives
the same indices, and S < S' gives nested samples (q_c is nondecreasing in S). The indices are
returned sorted ascending.
"""

from __future__ import annotations

import heapq
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int
from .._seeds import generator_for
from .base import Dataset

__all__ = ["class_quotas", "class_sequence", "stratified_indices", "subsample"]


@lru_cache(maxsize=16)
def _sequence(counts: tuple[int, ...]) -> np.ndarray:
    N = sum(counts)
    taken = [0] * len(counts)
    pending = [(1, c) for c, n in enumerate(counts) if n > 0]  # (release step, class)
    heapq.heapify(pending)
    ready: list[tuple[int, int]] = []  # (deadline, class)
    out = np.empty(N, dtype=np.int64)
    for t in range(1, N + 1):
        while pending and pending[0][0] <= t:
            _, c = heapq.heappop(pending)
            heapq.heappush(ready, (-(-(taken[c] + 1) * N // counts[c]), c))
        _, c = heapq.heappop(ready)
        out[t - 1] = c
        taken[c] += 1
        if taken[c] < counts[c]:
            # Item j = taken + 1 is released at the first t' with taken * N < t' n_c.
            heapq.heappush(pending, (taken[c] * N // counts[c] + 1, c))
    out.setflags(write=False)
    return out


def class_sequence(counts: Tensor | np.ndarray | list[int]) -> np.ndarray:
    """The class sequence c_1..c_N of the module docstring for class counts ``counts``."""
    return _sequence(tuple(int(n) for n in np.asarray(counts).tolist()))


def class_quotas(counts: Tensor | np.ndarray | list[int], S: int) -> np.ndarray:
    """q_c(S) for every class c: how many points of each class a sample of size S takes."""
    seq = class_sequence(counts)
    return np.bincount(seq[:S], minlength=len(np.asarray(counts)))


def stratified_indices(labels: Tensor, S: int, seed: int, stream: str = "subsample") -> Tensor:
    """Sorted indices of a stratified, nested sample of size S of ``labels`` (see module doc)."""
    y = torch.as_tensor(labels).to(torch.long).cpu()
    N = len(y)
    check_int("S", S, 0)
    if S > N:
        raise ValueError(f"sample size S = {S} is larger than the training pool ({N} samples)")
    if N == 0 or S == 0:
        return torch.zeros(0, dtype=torch.long)
    if int(y.min()) < 0:
        raise ValueError("labels must be non-negative class indices")
    counts = torch.bincount(y)
    quotas = np.bincount(class_sequence(counts.numpy())[:S], minlength=len(counts))
    perm = torch.randperm(N, generator=generator_for(seed, stream))
    # Stable sort by class keeps each class's points in permutation order.
    order = perm[torch.sort(y[perm], stable=True).indices]
    starts = torch.cumsum(counts, 0) - counts
    picks = [order[int(s) : int(s) + int(q)] for s, q in zip(starts, quotas, strict=True) if q > 0]
    return torch.sort(torch.cat(picks)).values


def subsample(dataset: Dataset, S: int, seed: int) -> Tensor:
    """Indices (int64, sorted ascending) into ``dataset.x`` of the training sample of size S.

    Deterministic in (S, seed), stratified so that class c gets between floor(S n_c / N) and
    ceil(S n_c / N) points (n_c of the N pool points are of class c), and nested: for a fixed
    seed the sample of size S is contained in every sample of larger size. The test set is not
    part of the pool, so every sample is disjoint from it. S > pool size is a ValueError.
    """
    check_int("S", S, 1)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if len(dataset.y) < S:
        raise ValueError(f"sample size S = {S} is larger than the training pool of "
                         f"{dataset.name!r} ({len(dataset.y)} samples)")
    return stratified_indices(dataset.y, S, seed)
