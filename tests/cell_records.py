"""Typed store records for tests of the analyses: a real :class:`Cell` (model built by the
registry, training configuration checked by the engine) with the numbers a test chooses."""

from __future__ import annotations

from typing import Any

from resdyn.models.registry import build_model
from resdyn.sweeps.cells import Cell, DataConfig, TrainingConfig
from resdyn.sweeps.records import CellRecord
from resdyn.training.control import ControlConfig
from resdyn.training.engine import TrainConfig


def make_cell(*, seed: int = 0, sample_size: int = 32, data: str = "two_spirals",
              data_options: dict[str, Any] | None = None, model: dict[str, Any] | None = None,
              train: dict[str, Any] | None = None, lr: float = 0.01,
              control: dict[str, Any] | None = None, dtype: str = "float32",
              warm_from: tuple[str, ...] = (), warm_init: bool = True) -> Cell:
    """A cell of ``model`` (a resnet unless it names a family) on ``data``."""
    m = {"family": "resnet", **(model or {})}
    return Cell(build_model(**m), DataConfig(data, tuple((data_options or {}).items())),
                TrainingConfig(TrainConfig(**(train or {})), lr, 0,
                               None if control is None else ControlConfig(**control)),
                sample_size, seed, dtype, warm_from=warm_from, warm_key="depth" if warm_from else "",
                warm_init=warm_init)


def make_record(*, status: str = "done", spec: str = "test", metrics: dict[str, float] | None = None,
                measures: dict[str, float] | None = None, series: dict | None = None,
                timing: dict[str, float] | None = None, cell_id: str | None = None,
                **cell: Any) -> CellRecord:
    """A finished cell's record: ``make_cell(**cell)`` with these numbers."""
    c = make_cell(**cell)
    return CellRecord(cell_id or c.cell_id, spec, status, c, dict(metrics or {}),
                      dict(measures or {}), dict(timing or {}), {}, dict(series or {}))
