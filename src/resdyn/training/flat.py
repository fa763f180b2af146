"""A group's trainable parameters as one flat buffer, with a view per tensor.

Block k of the buffer holds params[k] (E, *shape_k) contiguously (parameter-major), so every view
is a contiguous tensor of the usual shape and the model sees nothing new. An optimiser then runs
one element-wise pass over the whole buffer instead of one per tensor (a handful of kernels per
step instead of a handful per parameter), and the gradient of sum_e J_e with respect to the
buffer arrives as one tensor. Per-model quantities (rates, the active mask) are spread over the
elements by ``element_model``, the model index of every element.

Every element sees the same arithmetic as in the per-tensor update, so the flat update is
bitwise the per-tensor one (tests/test_optim_flat.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..models.base import Params

__all__ = ["FlatLayout"]


class FlatLayout:
    """Offsets of ``names`` of ``like`` (all of one dtype and device) in a flat buffer."""

    def __init__(self, names: Sequence[str], like: Params):
        dtypes = {like[k].dtype for k in names}
        if len(dtypes) != 1:
            raise ValueError(f"a flat buffer holds one dtype; parameters {list(names)} have "
                             f"{sorted(map(str, dtypes))}")
        first = like[names[0]]
        self.names = list(names)
        self.shapes = [tuple(like[k].shape) for k in names]
        self.sizes = [like[k].numel() for k in names]
        self.E = first.shape[0]
        self.dtype, self.device = first.dtype, first.device
        per_model = [n // self.E for n in self.sizes]
        models = torch.arange(self.E, device=self.device)
        self.element_model = torch.cat([models.repeat_interleave(n) for n in per_model])

    def flatten(self, tensors: Mapping[str, Tensor], prefix: str = "") -> Tensor:
        """One buffer from ``tensors[prefix + name]`` for every name (a copy)."""
        return torch.cat([tensors[prefix + k].reshape(-1) for k in self.names])

    def views(self, flat: Tensor, prefix: str = "") -> dict[str, Tensor]:
        """``{prefix + name: view}``: contiguous views of ``flat`` in the parameters' shapes."""
        parts = flat.split(self.sizes)
        return {prefix + k: p.view(s) for k, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def per_element(self, values: Tensor) -> Tensor:
        """Spread a per-model (E,) tensor over the buffer's elements."""
        return values.index_select(0, self.element_model)

    def rate(self, lr: Tensor, scales: Mapping[str, float]) -> Tensor:
        """lr_e s_name at every element, rounded as the per-tensor update rounds it."""
        scale = torch.cat([torch.full((n,), scales.get(k, 1.0), dtype=self.dtype, device=self.device)
                           for k, n in zip(self.names, self.sizes, strict=True)])
        return self.per_element(lr) * scale

    def per_model_all_finite(self, flat: Tensor) -> Tensor:
        """(E,) bool: every element of model e in ``flat`` is finite."""
        # Block k is params[k] (E, ...) contiguous: a row-wise all() per block, no scatter.
        finite = torch.isfinite(flat).split(self.sizes)
        return torch.stack([f.view(self.E, -1).all(1) for f in finite]).all(0)
