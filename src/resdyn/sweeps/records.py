"""A store row, typed: the decoded :class:`~resdyn.sweeps.cells.Cell` and what training it gave.

The analyses and reports read fields (``rec.cell.model.depth``, ``rec.cell.sample_size``,
``rec.metrics["test_acc"]``), never the stored JSON. The row's config is decoded once, by the one
codec (:func:`resdyn.sweeps.cells.decode_cell`).

Stores written by the former custom certificates runner hold cells whose config names the
``reproduction``; such a record still reads, with no typed cell (``cell`` is None) and its stored
config in ``custom``. Nothing writes such rows any more: certificates are ordinary spec cells.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .cells import Cell, decode_cell, flat_settings

__all__ = ["CellRecord", "record_from_row"]


@dataclass(frozen=True)
class CellRecord:
    """One finished cell of a store: ``cell_id``, the ``spec`` that ran it, ``status`` ('done'
    or 'diverged'), the typed ``cell``, its ``metrics``, ``measures``, ``timing`` and
    ``provenance``, ``series`` ({name: {step: value}}, empty unless read with the series), the
    weights file (``weights``, relative to the store's folder; None without weights), its
    ``sha256`` (None in rows written before it was recorded) and ``finished_at``."""

    cell_id: str
    spec: str
    status: str
    cell: Cell | None
    metrics: dict[str, float]
    measures: dict[str, float] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    series: dict[str, dict[int, float]] = field(default_factory=dict)
    weights: str | None = None
    sha256: str | None = None
    finished_at: float = 0.0
    custom: dict[str, Any] | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """The cell's settings as one flat table (:func:`resdyn.sweeps.cells.flat_settings`)."""
        if self.cell is not None:
            return self.cell.settings
        return flat_settings(self.custom or {})

    @property
    def full_settings(self) -> dict[str, Any]:
        """:attr:`settings` with later fields at their defaults (:attr:`Cell.full_settings`)."""
        return self.cell.full_settings if self.cell is not None else self.settings

    @property
    def stored_config(self) -> dict[str, Any]:
        """The config JSON the row holds (the cell's stored form, or a custom one)."""
        return self.cell.config if self.cell is not None else dict(self.custom or {})


def record_from_row(row: Mapping[str, Any]) -> CellRecord:
    """The record of a store row whose columns are decoded (:meth:`Store.rows`); its config is
    decoded by :func:`~resdyn.sweeps.cells.decode_cell` (``CellDecodeError`` naming the fault),
    unless it names a ``reproduction`` (a custom reproduction's cell: ``cell`` None)."""
    config = row["config"]
    custom = isinstance(config, Mapping) and "reproduction" in config
    return CellRecord(
        cell_id=row["cell_id"], spec=row["spec"], status=row["status"],
        cell=None if custom else decode_cell(config),
        metrics=dict(row["metrics"]), measures=dict(row["measures"]), timing=dict(row["timing"]),
        provenance=dict(row["provenance"]), series=dict(row.get("series", {})),
        weights=row.get("weights"), sha256=row.get("sha256"),
        finished_at=float(row.get("finished_at", 0.0)),
        custom=dict(config) if custom else None,
    )
