"""Sweeps: specs, grids of cells, groups, the store, executors."""

from .cells import Cell, CellDecodeError, decode_cell
from .grid import expand, group_cells
from .records import CellRecord
from .spec import Spec, SpecError, load_spec, parse_spec
from .store import CellResult, Store, StoreError
from .sweep import SweepSummary, run_sweep

__all__ = ["Cell", "CellDecodeError", "CellRecord", "CellResult", "Spec", "SpecError", "Store",
           "StoreError", "SweepSummary", "decode_cell", "expand", "group_cells", "load_spec",
           "parse_spec", "run_sweep"]
