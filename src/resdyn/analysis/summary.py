"""Summaries over seeds: means with Student-t intervals, and store rows grouped by settings."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["MeanCI", "group_rows", "mean_ci", "overlap"]


@dataclass(frozen=True)
class MeanCI:
    """Mean of n values with the two-sided ``level`` Student-t interval mean +- t s / sqrt(n)
    (s the sample standard deviation); with n = 1 the interval is the point."""

    mean: float
    lo: float
    hi: float
    n: int
    std: float

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n, "std": self.std}

    def __str__(self) -> str:
        return f"{self.mean:.4g} [{self.lo:.4g}, {self.hi:.4g}]"


def mean_ci(values: Sequence[float], level: float = 0.95) -> MeanCI:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        raise ValueError("mean_ci: no finite values")
    m = float(v.mean())
    if len(v) == 1:
        return MeanCI(m, m, m, 1, 0.0)
    s = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1)) * s / math.sqrt(len(v))
    return MeanCI(m, m - half, m + half, len(v), s)


def overlap(intervals: Iterable[MeanCI]) -> bool:
    """True when all intervals share a point: max of the lower ends <= min of the upper ends."""
    iv = list(intervals)
    return max(i.lo for i in iv) <= min(i.hi for i in iv)


def group_rows(rows: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict[Any, list]:
    """Rows by ``key(row)``, keys in first-appearance order."""
    out: dict[Any, list] = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out
