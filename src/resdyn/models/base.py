"""The functional model contract every family follows.

A model is a frozen dataclass describing a shape (no tensors inside). Its parameters are a
``Params`` dict of tensors whose leading axis ``B`` indexes models: ``forward(params, x)`` maps
inputs ``x`` of shape ``(B, n, *input_shape)`` to outputs ``(B, n, out_dim)``, computing all ``B``
models at once. A single model is ``B = 1``; the training engine also uses ``B`` for chunks of
samples that share one model's parameters (see ``resdyn.training.layout``).

``init(generator, dtype, device)`` draws one model's parameters (no leading axis) from its own
generator, so that a model's initial weights depend on its seed only, never on its batch-mates.

A family may also define ``forward_chunks(params, x, owner)``: the outputs of chunk b of ``x``
under model ``owner[b]`` of ``params`` (leading axis E), equal to ``forward`` on the gathered
parameters ``{k: v[owner]}``, or None where it has no faster way; :func:`forward_chunks` uses it
where given (the native ResNet reads each model's weights in place instead of copying them per
chunk).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .._seeds import derive_seed, generator_for

__all__ = ["Model", "Params", "derive_seed", "forward_chunks", "generator_for", "init_params",
           "num_parameters"]

Params = dict[str, Tensor]


@runtime_checkable
class Model(Protocol):
    """Shape of a model family; see the module docstring."""

    family: str

    @property
    def out_dim(self) -> int: ...

    def init(self, generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> Params:
        ...

    def forward(self, params: Params, x: Tensor) -> Tensor: ...


def forward_chunks(model: Model, params: Params, x: Tensor, owner: Tensor) -> Tensor:
    """Outputs (B, n, k) of chunk b of ``x`` under model ``owner[b]`` of ``params``: the family's
    ``forward_chunks`` where it has one, else ``forward`` on the parameters gathered by owner."""
    own = getattr(model, "forward_chunks", None)
    out = None if own is None else own(params, x, owner)
    if out is not None:
        return out
    return model.forward({k: v.index_select(0, owner) for k, v in params.items()}, x)


def init_params(
    model: Model,
    seeds: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Params:
    """Parameters of ``len(seeds)`` models stacked on a leading model axis ``E``.

    Model ``e`` is drawn from the ``init`` stream of ``seeds[e]`` alone.
    """
    if len(seeds) == 0:
        raise ValueError("init_params: seeds must name at least one model, got an empty sequence")
    device = torch.device(device)
    cpu = torch.device("cpu")
    singles = [model.init(generator_for(s, "init"), torch.float64, cpu) for s in seeds]
    # Drawn in float64 on the CPU, then cast: the float32 model is the rounding of the float64
    # one, and a seed means the same network on every device.
    return {
        k: torch.stack([p[k] for p in singles]).to(dtype=dtype, device=device)
        for k in singles[0]
    }


def num_parameters(params: Params) -> int:
    """Number of scalar parameters of one model (the leading model axis excluded)."""
    return sum(int(v[0].numel()) for v in params.values())
