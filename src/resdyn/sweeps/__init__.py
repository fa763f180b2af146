"""Sweeps: specs, grids of cells, groups, the store, executors."""

from .cells import Cell
from .grid import expand, group_cells
from .spec import Spec, SpecError, load_spec, parse_spec
from .store import CellResult, Store, StoreError
from .sweep import SweepSummary, run_sweep

__all__ = ["Cell", "CellResult", "Spec", "SpecError", "Store", "StoreError", "SweepSummary",
           "expand", "group_cells", "load_spec", "parse_spec", "run_sweep"]
