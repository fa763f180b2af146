"""Trained models one call away: a store's cell as a model, its parameters and its configuration.

    >>> cell = resdyn.load_cell("runs/my-sweep.sqlite", "019c1ad8")   # an id or a unique prefix
    >>> model, params, config = cell                                   # params: leading axis E = 1
    >>> net = resdyn.as_module(model, params)                          # a torch.nn.Module
    >>> logits = net(x)                                                 # x: (n, *input_shape)

The parameters are the ones the sweep wrote when the cell finished, in the dtype it trained in,
so evaluating them on the cell's data reproduces the stored metrics exactly (same device).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .data.base import Dataset
from .models.base import Model, Params
from .models.registry import check_model_fits
from .sweeps.cells import Cell
from .sweeps.store import CellRecord, Store, StoreError

__all__ = ["CellNotFoundError", "LoadedCell", "ResdynModule", "as_module", "certificate_weights", "find_cell",
           "load_cell"]


class CellNotFoundError(StoreError):
    """A cell id (or prefix) that names no single cell of a store."""


@dataclass(frozen=True)
class LoadedCell:
    """A finished cell: ``model``; ``params`` with a leading model axis of size 1; ``config``,
    the cell's resolved configuration (its stored form); ``record``, its typed store record
    (``record.cell``: the decoded :class:`~resdyn.sweeps.cells.Cell`; metrics, measures, timing).

    Unpacks as ``model, params, config``.
    """

    cell_id: str
    model: Model
    params: Params
    config: dict[str, Any]
    record: CellRecord

    def __iter__(self):
        return iter((self.model, self.params, self.config))

    @property
    def cell(self) -> Cell:
        """The typed cell (model, data, training, sample size, seed, ...)."""
        return self.record.cell

    def data(self) -> Dataset:
        """The cell's data set, as the sweep loaded it (its data root included)."""
        return self.cell.data.load()

    def train_indices(self) -> Tensor:
        """The cell's training sample: rows of the data set's pool, drawn from its own seed."""
        return self.cell.data.indices(self.data(), self.cell.sample_size, self.cell.seed)

    def module(self) -> ResdynModule:
        return as_module(self.model, self.params)


def find_cell(st: Store, cell_id: str) -> CellRecord:
    """The record of the cell whose id is ``cell_id`` or starts with it (a unique prefix of >= 4
    characters); every row is checked (:meth:`Store.rows`), only that row's config is decoded."""
    ids = [r["cell_id"] for r in st.rows()]
    exact = [i for i in ids if i == cell_id]
    if not exact:
        if len(cell_id) < 4:
            raise CellNotFoundError(f"cell id {cell_id!r} is too short: give the id or a prefix of at "
                                    "least 4 characters (see `resdyn results STORE --columns cell_id`)")
        exact = [i for i in ids if i.startswith(cell_id)]
        if not exact:
            raise CellNotFoundError(f"no cell {cell_id!r} in store {st.path} ({len(ids)} cells; list "
                                    f"them with `resdyn results {st.path} --columns cell_id,spec`)")
        if len(exact) > 1:
            raise CellNotFoundError(f"cell id prefix {cell_id!r} matches {len(exact)} cells in "
                                    f"{st.path}: " + ", ".join(exact[:5]))
    (record,) = st.records(ids=exact)
    return record


def certificate_weights(st: Store, record: CellRecord) -> tuple[Params, Params, Params | None]:
    """A finished certificate cell's prior mean m, whitened posterior mean u and the
    data-independent baseline's u (None for a cell without one), each with a model axis of 1,
    read through :meth:`~resdyn.sweeps.store.Store.load_extras` (sha256 checked). Raises
    :class:`~resdyn.sweeps.store.StoreError` for a cell that is not a finished certificate cell."""
    if record.cell is None or record.cell.certificate is None:
        raise StoreError(f"cell {record.cell_id} of {st.path} is not a certificate cell (its spec has no "
                         "[certificate] table)")
    if record.status != "done":
        raise StoreError(f"cell {record.cell_id} diverged; it has no certificate to recompute")

    def axis(name: str) -> Params:
        return {k: v.unsqueeze(0) for k, v in st.load_extras(record, name).items()}

    base = axis("baseline_u") if "baseline_certificate" in record.metrics else None
    return axis("prior_mean"), axis("posterior_u"), base


def load_cell(store: str | Path, cell_id: str, device: str | torch.device = "cpu") -> LoadedCell:
    """The model, parameters (leading axis 1) and configuration of a finished cell of ``store``.

    The row's config is decoded by the one codec (:func:`resdyn.sweeps.cells.decode_cell`); the
    weights are read through :meth:`~resdyn.sweeps.store.Store.load_weights` (inside the store's
    folder, sha256 checked, the model and shapes of the decoded cell). Raises
    :class:`~resdyn.sweeps.store.StoreError` when the store, the cell or its weights file is
    missing or damaged.
    """
    with Store(store, create=False) as st:
        record = find_cell(st, cell_id)
        model, params = st.load_weights(record, device)
    # The sweep writes one model's tensors (no model axis); give them the axis every function
    # of resdyn takes.
    params = {k: v.unsqueeze(0) for k, v in params.items()}
    return LoadedCell(record.cell_id, model, params, record.stored_config, record)


class ResdynModule(nn.Module):
    """A resdyn model as an ``nn.Module``: ``forward(x)`` maps ``(n, *input_shape)`` to
    ``(n, out_dim)`` logits with model index ``index`` of ``params``; the parameters are
    ``nn.Parameter``s (trainable with any torch optimiser) named as in ``params``."""

    def __init__(self, model: Model, params: Params, index: int = 0):
        super().__init__()
        E = next(iter(params.values())).shape[0]
        if not 0 <= index < E:
            raise ValueError(f"index must be in [0, {E}) (models in params), got {index}")
        self.model = model
        self.names = list(params)
        self.weights = nn.ParameterDict(
            {k: nn.Parameter(v[index : index + 1].detach().clone()) for k, v in params.items()})

    def params(self) -> Params:
        """The current parameters as resdyn's dict (leading model axis 1)."""
        return {k: self.weights[k] for k in self.names}

    def forward(self, x: Tensor) -> Tensor:
        device = self.weights[self.names[0]].device
        if x.device != device or x.device.type not in ("cpu", "cuda"):
            raise ValueError(f"x is on {x.device} but the module's parameters are on {device}; "
                             "the module computes on 'cpu' or 'cuda' with x on its parameters' "
                             "device (module.to(device), x.to(device))")
        return self.model.forward(self.params(), x.unsqueeze(0))[0]


def as_module(model: Model, params: Params, index: int = 0,
              data: Dataset | None = None) -> ResdynModule:
    """``model`` with model ``index`` of ``params`` as a ``torch.nn.Module``.

    With ``data``, first check that the model's in_dim / out_dim fit the data set (a clear
    ``ValueError`` instead of a shape error deep inside torch).
    """
    if data is not None:
        check_model_fits(model, data.input_shape, data.num_classes, f"data set {data.name!r}")
    return ResdynModule(model, params, index)
