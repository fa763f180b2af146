"""The in-memory form every data set takes: a training pool, a fixed test set, normalisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["Dataset"]


@dataclass(frozen=True)
class Dataset:
    """A training pool and a fixed test set, disjoint.

    ``x`` (N, *input_shape) and ``x_test`` are float or uint8 (images stay uint8 until batched);
    ``y``, ``y_test`` are int64 class labels in [0, num_classes). ``mean`` and ``std`` are the
    normalisation statistics of the whole training pool, broadcastable to one sample, applied by
    :meth:`prepare` after uint8 inputs are scaled to [0, 1]; they do not depend on the subsample,
    so a sweep over S changes nothing but S.
    """

    name: str
    x: Tensor
    y: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    mean: Tensor | None = None
    std: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y) or len(self.x_test) != len(self.y_test):
            raise ValueError(
                f"data set {self.name!r}: inputs and labels differ in length "
                f"(train {len(self.x)} vs {len(self.y)}, test {len(self.x_test)} vs {len(self.y_test)})"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def in_dim(self) -> int:
        """Number of input features (channels x height x width for images)."""
        return int(torch.tensor(self.input_shape).prod().item()) if self.input_shape else 1

    def prepare(self, x: Tensor, dtype: torch.dtype, device: torch.device | str) -> Tensor:
        """Raw inputs to the float tensor a model sees: uint8 / 255, then (x - mean) / std."""
        out = x.to(device=device)
        out = out.to(dtype) / 255.0 if out.dtype == torch.uint8 else out.to(dtype)
        if self.mean is not None:
            out = out - self.mean.to(device=device, dtype=dtype)
        if self.std is not None:
            out = out / self.std.to(device=device, dtype=dtype)
        return out
