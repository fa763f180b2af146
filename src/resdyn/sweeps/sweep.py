"""Run or resume a spec: expand, skip what the store has, claim, group, train, write."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..training.control import prolong_to
from .cells import Cell
from .executors import LocalExecutor, RayExecutor
from .grid import expand, group_cells
from .runner import WarmStart
from .spec import Spec
from .store import CellResult, Store, check_store_path, provenance

__all__ = ["SweepSummary", "plan", "run_sweep", "warm_params"]


@dataclass
class SweepSummary:
    total: int
    already_done: int
    trained: int = 0
    diverged: int = 0
    held_elsewhere: list[str] = field(default_factory=list)
    groups: int = 0
    waiting: list[str] = field(default_factory=list)  # cells whose warm-start sources are not done


def plan(spec: Spec, store_path: str | Path) -> tuple[list[Cell], set[str]]:
    """All cells and the ids the store already has (opens nothing for writing if absent)."""
    cells = expand(spec)
    path = check_store_path(store_path)
    if not path.is_file():
        return cells, set()
    with Store(path, create=False) as st:
        return cells, st.done_ids()


def run_sweep(
    spec: Spec,
    store_path: str | Path,
    executor: LocalExecutor | RayExecutor | None = None,
    device: str = "cpu",
    on_group: Callable[[list[CellResult]], None] | None = None,
    cells: list[Cell] | None = None,
) -> SweepSummary:
    """Train every cell of ``spec`` that ``store_path`` does not have yet.

    Validation (the spec, its data sets, every cell's model, the store path) happens before
    anything is written. Cells held by another live run are left to it and listed in the
    summary. ``cells``: the spec's expansion, when the caller already has it.
    """
    cells = expand(spec) if cells is None else cells
    check_store_path(store_path)
    executor = executor or LocalExecutor(device)
    if spec.run.threads is not None and isinstance(executor, LocalExecutor) and executor.threads is None:
        executor.threads = spec.run.threads  # the spec's choice unless the command line made one
    owner = Store.new_owner()
    with Store(store_path) as store:
        done = store.done_ids()
        todo = [c for c in cells if c.cell_id not in done]
        summary = SweepSummary(total=len(cells), already_done=len(cells) - len(todo))
        prov = provenance(spec.run.dtype, device)
        stop = threading.Event()
        renewer = threading.Thread(target=_renew, args=(store.path, owner, spec.run.lease_seconds,
                                                        stop), daemon=True)
        renewer.start()
        checkpoint = (store.load_checkpoint, store.save_checkpoint)
        try:
            # Waves: a cell is ready once every cell it starts from is in the store. Without
            # warm starts there is one wave; a resumed run starts from what the store holds.
            while todo:
                done = store.done_ids()
                ready = [c for c in todo if all(d in done for d in c.warm_from)]
                if not ready:
                    summary.waiting = [c.cell_id for c in todo]
                    break
                todo = [c for c in todo if not all(d in done for d in c.warm_from)]
                claimed = set(store.claim([c.cell_id for c in ready], owner, spec.run.lease_seconds))
                summary.held_elsewhere += [c.cell_id for c in ready if c.cell_id not in claimed]
                mine = [c for c in ready if c.cell_id in claimed]
                groups = group_cells(mine, spec.run.group_size, store.checkpoint_steps(claimed))
                summary.groups += len(groups)
                warm = warm_params(store, mine)
                for _, results in executor.run(groups, checkpoint, spec.run.checkpoint_seconds, warm):
                    for r in results:
                        r.provenance = {**prov, **r.provenance}  # the group's own (native) kept
                        if store.write(spec.name, r, owner):
                            summary.trained += 1
                            summary.diverged += int(r.diverged)
                    if on_group is not None:
                        on_group(results)
        finally:
            stop.set()
            renewer.join()
            store.release(owner)
    return summary


def warm_params(store: Store, cells: list[Cell]) -> dict[str, WarmStart]:
    """Initial parameters of every warm cell (and the reference of every cell that depends on the
    level below without starting from it): the stored weights of the cell it depends on with the
    lowest final training objective (finished, not diverged), prolonged to its model (the model's
    ``prolong``, else ``resdyn.training.control.prolong_to``). Weights are read through
    :meth:`Store.load_weights` (inside the store's folder, sha256 checked)."""
    warm_cells = [c for c in cells if c.warm_from]
    if not warm_cells:
        return {}
    needed = {d for c in warm_cells for d in c.warm_from}
    records = {r.cell_id: r for r in store.records(ids=needed)}
    out = {}
    for c in warm_cells:
        scores = [(records[d].metrics.get("final_train_objective", math.inf), d)
                  for d in c.warm_from if records[d].status == "done"]
        scores = [(s, d) for s, d in scores if math.isfinite(s)]
        if not scores:
            raise RuntimeError(f"cell {c.cell_id}: every cell it starts from diverged "
                               f"({', '.join(c.warm_from)})")
        src_model, params = store.load_weights(records[min(scores)[1]])
        src = {k: v.unsqueeze(0) for k, v in params.items()}
        out[c.cell_id] = WarmStart(src_model.prolong(src, c.model) if hasattr(src_model, "prolong")
                                   else prolong_to(src_model, src, c.model), src_model, src)
    return out


def _renew(path: Path, owner: str, seconds: float, stop: threading.Event) -> None:
    """Keep this run's leases alive while it runs (its own connection: sqlite3 is per-thread)."""
    with Store(path, create=False) as st:
        while not stop.wait(max(1.0, seconds / 3)):
            st.renew(owner, seconds)
