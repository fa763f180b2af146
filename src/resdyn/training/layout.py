"""Ragged per-model sample sets laid out as equal chunks, so that one batched call serves all.

Model e trains on S_e samples. Padding every model to max_e S_e multiplies the arithmetic by
max S / mean S (about 3 for a doubling sweep); instead each model's samples are cut into chunks
of ``C`` rows (the last one padded and masked), and a chunk carries the index of its owner. The
engine gathers each chunk's parameters by owner, runs the model with the chunk axis as its
leading axis, and sums chunk losses back per model with ``index_add`` (sequential on the CPU).

A model's arithmetic is then the same whatever its batch-mates: the same chunks, the same
per-chunk products, the same summation order. That is what makes a model trained in a group
bitwise equal to the same model trained alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ChunkLayout", "chunk_layout"]


@dataclass(frozen=True)
class ChunkLayout:
    """index (n_chunks, C): pool rows (padding repeats the chunk's first row); mask (n_chunks, C):
    real rows; owner (n_chunks,): model of each chunk; count (E,): real rows per model."""

    index: Tensor
    mask: Tensor
    owner: Tensor
    count: Tensor

    @property
    def num_models(self) -> int:
        return len(self.count)

    def to(self, device: torch.device) -> ChunkLayout:
        return ChunkLayout(*(t.to(device) for t in (self.index, self.mask, self.owner, self.count)))

    def per_model_sum(self, values: Tensor) -> Tensor:
        """Sum (n_chunks, C) per-row values over each model's real rows: shape (E,)."""
        rows = torch.where(self.mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
        out = torch.zeros(self.num_models, dtype=values.dtype, device=values.device)
        return out.index_add(0, self.owner, rows.sum(1))

    def per_model_mean(self, values: Tensor) -> Tensor:
        return self.per_model_sum(values) / self.count.to(values.dtype)


def chunk_layout(indices: Sequence[Tensor], chunk_size: int) -> ChunkLayout:
    """Lay out per-model index sets (model e: ``indices[e]``, any length >= 1) in chunks."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    rows, masks, owners, counts = [], [], [], []
    for e, idx in enumerate(indices):
        idx = torch.as_tensor(idx, dtype=torch.long).flatten()
        if len(idx) == 0:
            raise ValueError(f"model {e} has no training samples; every model needs at least one")
        n_chunks = -(-len(idx) // chunk_size)
        pad = n_chunks * chunk_size - len(idx)
        padded = torch.cat([idx, idx[:1].expand(pad)]) if pad else idx
        rows.append(padded.view(n_chunks, chunk_size))
        m = torch.ones(n_chunks * chunk_size, dtype=torch.bool)
        if pad:
            m[-pad:] = False
        masks.append(m.view(n_chunks, chunk_size))
        owners.append(torch.full((n_chunks,), e, dtype=torch.long))
        counts.append(len(idx))
    return ChunkLayout(
        torch.cat(rows), torch.cat(masks), torch.cat(owners), torch.tensor(counts, dtype=torch.long)
    )
