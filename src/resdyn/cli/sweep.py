"""``resdyn run``, ``resdyn results``, ``resdyn status``: run a spec, read a store."""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from .._paths import check_name, inside
from ..sweeps.spec import SpecError, check_fits_memory, load_spec
from ..sweeps.store import Store, StoreError
from .options import setup_compute, terminate_like_interrupt, threads_option


def default_store(spec_name: str) -> Path:
    """``runs/<spec name>.sqlite``; the name is checked against the name pattern and the path to
    stay inside ``runs/``."""
    inside("runs", f"{check_name('spec name', spec_name)}.sqlite")
    return Path("runs") / f"{spec_name}.sqlite"


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(1)


def _resumed(store: Path, cells) -> dict[int, int]:
    """step -> number of cells whose checkpoint in ``store`` resumes there."""
    if not Path(store).is_file():
        return {}
    with Store(store, create=False) as st:
        steps = st.checkpoint_steps(c.cell_id for c in cells)
    out: dict[int, int] = {}
    for k in steps.values():
        out[k] = out.get(k, 0) + 1
    return out


def execute_spec(spec, store, executor, device, threads, ray_address=None, quiet=False):
    """Run ``spec`` into ``store`` with a progress bar; shared by ``run`` and ``reproduce``.

    The bar counts model-steps (a group of E models advancing one step is E of them), so it moves
    within a group, and shows the group's step, the latest mean training loss, finished models per
    second and the time remaining.
    """
    from ..sweeps.executors import make_executor
    from ..sweeps.sweep import plan, run_sweep

    cells, done = plan(spec, store)
    todo = [c for c in cells if c.cell_id not in done]
    resumed = _resumed(store, todo)
    for step, n in sorted(resumed.items()):
        click.echo(f"{spec.name}: resumed {n} cells from step {step}", err=quiet)
    ckpt_steps = {}
    if resumed and Path(store).is_file():
        with Store(store, create=False) as st:
            ckpt_steps = st.checkpoint_steps(c.cell_id for c in todo)
    total = sum(max(c.training.config.steps - ckpt_steps.get(c.cell_id, 0), 1) for c in todo)
    opts = {"address": ray_address} if executor == "ray" else {}
    ex = make_executor(executor, device, threads, **opts)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("{task.fields[cells]} cells"), TextColumn("{task.fields[step]}"),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} models/s"),
               TextColumn("ETA"), TimeRemainingColumn())
    import time

    t0 = time.perf_counter()
    finished = {"work": 0, "cells": 0}
    with Progress(*columns, disable=quiet, transient=False) as bar:
        task = bar.add_task(spec.name, total=total, cells=f"0/{len(todo)}", step="",
                            loss="-", rate="-")

        def rate() -> str:
            secs = time.perf_counter() - t0
            return f"{finished['cells'] / secs:.3g}" if finished["cells"] and secs > 0 else "-"

        def on_step(p) -> None:
            nonlocal t0
            if "started" not in finished:
                # Speed (and so the ETA) counts from the first step, not from start-up (imports,
                # data loading, building the model).
                finished["started"] = 1
                t0 = time.perf_counter()
                bar.reset(task, total=total, completed=0)
            work = finished["work"] + max(p.step - p.start_step, 0) * p.models
            secs = time.perf_counter() - t0
            # models per second from the steps done so far: work / steps-per-model / time
            speed = work / max(p.steps, 1) / secs if work and secs > 0 else 0.0
            bar.update(task, completed=work, step=f"step {p.step}/{p.steps}",
                       loss="-" if p.mean_loss != p.mean_loss else f"{p.mean_loss:.4g}",
                       rate=f"{speed:.3g}" if speed > 0 else rate())

        def on_group(results):
            finished["cells"] += len(results)
            finished["work"] += sum(max(r.cell.training.config.steps
                                        - ckpt_steps.get(r.cell_id, 0), 1) for r in results)
            bar.update(task, completed=finished["work"], cells=f"{finished['cells']}/{len(todo)}",
                       rate=rate())

        if hasattr(ex, "progress") and not quiet:
            ex.progress = on_step
        with terminate_like_interrupt():  # SIGTERM unwinds like SIGINT: claims are released
            summary = run_sweep(spec, store, ex, device, on_group=on_group, cells=cells)
    return summary


def dry_run_spec(spec, store: Path, device: str, threads: int | None) -> None:
    """Say what ``resdyn run`` would do: cells, groups, what the store has, a rough time."""
    import time
    from dataclasses import replace

    from ..sweeps.grid import group_cells
    from ..sweeps.runner import train_group
    from ..sweeps.sweep import plan

    cells, done = plan(spec, store)
    todo = [c for c in cells if c.cell_id not in done]
    resumed = _resumed(store, todo)
    groups = group_cells(todo, spec.run.group_size, {})
    click.echo(f"spec {spec.name}: {len(cells)} cells, {len(cells) - len(todo)} already in "
               f"{store}{' (absent: nothing stored yet)' if not Path(store).is_file() else ''}, "
               f"{len(todo)} to train in {len(groups)} groups (group_size {spec.run.group_size})")
    for step, n in sorted(resumed.items()):
        click.echo(f"  {n} of them resume from a checkpoint at step {step}")
    keys = list(spec.sweep)
    click.echo("  swept: " + "; ".join(f"{k} ({len(v)} values)" for k, v in spec.sweep.items())
               if keys else "  swept: nothing (one cell)")
    for i, g in enumerate(groups[:10]):
        c = g[0]
        click.echo(f"  group {i + 1}: {len(g)} cells, data {c.data.name}, "
                   f"{c.model.family}, {c.training.config.steps} steps")
    if len(groups) > 10:
        click.echo(f"  ... and {len(groups) - 10} more groups")
    if not todo:
        click.echo("estimated time: 0 s (nothing to train)")
        return
    # Time the first group at two step counts: the difference is the cost of steps alone, the
    # rest a per-group overhead (data, first calls). A rough estimate: measures come on top.
    g = groups[0]
    steps0 = g[0].training.config.steps
    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    def timed(k: int) -> float:
        probe = [replace(c, training=replace(c.training, config=replace(c.training.config, steps=k)),
                         measures={}, trackers={}) for c in g]
        t = time.perf_counter()
        train_group(probe, device)
        return time.perf_counter() - t

    k1, k2 = (1, 2) if steps0 < 10 else (2, 10)
    timed(k1)  # warm-up: first calls, data set cache
    t1, t2 = timed(k1), timed(k2)
    per_model_step = max(t2 - t1, 0.0) / ((k2 - k1) * len(g))
    overhead = max(t1 - k1 * per_model_step * len(g), 0.0)
    work = sum(c.training.config.steps for c in todo)
    est = per_model_step * work + overhead * len(groups)
    click.echo(f"estimated time: about {_duration(est)} for training ({per_model_step * 1e3:.3g} ms "
               f"per model-step and {overhead:.2g} s per group, timed on {k1} and {k2} steps of "
               "group 1); measures come on top")


def _duration(secs: float) -> str:
    if secs < 90:
        return f"{secs:.0f} s"
    if secs < 5400:
        return f"{secs / 60:.1f} min"
    return f"{secs / 3600:.1f} h"


@click.command()
@click.argument("spec_path", metavar="SPEC.toml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite store (default: runs/<spec name>.sqlite).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--ray-address", default=None, help="Ray cluster address (default: start a local one).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@threads_option("torch threads per group (per Ray task with --executor ray).")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default=None,
              help="Override the spec's run.dtype (cells of another dtype are other cells).")
@click.option("--dry-run", is_flag=True,
              help="Train nothing: print the cells, groups, what the store has and a time estimate.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run(spec_path, store, executor, ray_address, device, threads, dtype, dry_run, quiet) -> None:
    """Run (or resume) the sweep in SPEC.toml: train the cells the store does not have."""
    from dataclasses import replace

    setup_compute(device, dtype or "float32", threads)
    try:
        spec = load_spec(spec_path)
        if dtype is not None:
            spec = replace(spec, run=replace(spec.run, dtype=dtype))
        check_fits_memory(spec, math.prod(len(v) for v in spec.sweep.values()))
        store = store or default_store(spec.name)
        if dry_run:
            dry_run_spec(spec, store, device, threads)
            return
        summary = execute_spec(spec, store, executor, device, threads, ray_address, quiet)
    except (SpecError, StoreError) as err:
        _fail(str(err))
    except KeyboardInterrupt:
        click.echo(f"interrupted: finished cells are in {store}, this run's claims are released; "
                   "run the same command again to resume", err=True)
        sys.exit(130)
    click.echo(f"{spec.name}: {summary.total} cells; {summary.already_done} already in the store, "
               f"{summary.trained} trained now ({summary.diverged} diverged) in {summary.groups} "
               f"groups; store: {store}")
    if summary.held_elsewhere:
        click.echo(f"{len(summary.held_elsewhere)} cells are being trained by another run; "
                   "run again once it has finished")


def _read(store: Path, read):
    """``read(store)`` on the opened store; any StoreError is one line on stderr and exit 1."""
    try:
        with Store(store, create=False, readonly=True) as st:
            return read(st)
    except StoreError as err:
        _fail(str(err))


@click.command()
@click.argument("store", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--where", "where", multiple=True, metavar="KEY OP VALUE",
              help="Keep rows where KEY OP VALUE holds (OP: = != < <= > >=); repeat to combine, "
                   "e.g. --where data=digits --where sample_size>=64.")
@click.option("--columns", default=None, metavar="A,B,...",
              help="Only these columns, in this order (e.g. cell_id,sample_size,test_acc,weights).")
def results(store, fmt, where, columns) -> None:
    """Print one row per finished cell of STORE: identifiers and swept settings first, then
    metrics, measures, seconds per model and the cell's weights file (load it with
    resdyn.load_cell(STORE, cell_id)). A value not measured reads empty in CSV (null in JSON)."""
    from ..reports.tables import apply_where, choose_columns, flatten_row, strict_dumps

    stored, files = _read(store, lambda st: (st.records(), st.files))
    try:
        rows = [flatten_row(r, files) for r in stored]
    except (KeyError, TypeError, AttributeError) as err:
        _fail(f"store {store}: a row lacks the settings of a resdyn cell ({type(err).__name__}: "
              f"{err}); the store is damaged or foreign")
    try:
        rows = apply_where(rows, where)
        keys = choose_columns(rows, columns)
    except ValueError as err:
        _fail(str(err))
    rows = [{k: r.get(k) for k in keys} for r in rows]
    if fmt == "json":
        click.echo(strict_dumps(rows, indent=1))
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    click.echo(buf.getvalue().rstrip("\n"))


@click.command()
@click.argument("store", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The spec, to say which of its cells are missing.")
@click.option("--verify", is_flag=True,
              help="Check every row's weights file against the sha256 in its row.")
def status(store, spec_path, verify) -> None:
    """Say what STORE has done and, given --spec, what is missing."""
    import time

    rows, leases, checks = _read(store, lambda st: (st.rows(), st.leases(),
                                                    st.verify() if verify else []))
    by_spec: dict[str, list] = {}
    for r in rows:
        by_spec.setdefault(r["spec"], []).append(r)
    for name, rs in by_spec.items():
        div = sum(r["status"] == "diverged" for r in rs)
        click.echo(f"{name}: {len(rs)} cells finished ({div} diverged)")
    now = time.time()
    live = [lease for lease in leases if lease[2] > now]
    if live:
        click.echo(f"{len(live)} cells claimed by running sweeps")
    if spec_path is not None:
        try:
            from ..sweeps.grid import expand

            cells = expand(load_spec(spec_path))
        except SpecError as err:
            _fail(str(err))
        done = {r["cell_id"] for r in rows}
        missing = [c for c in cells if c.cell_id not in done]
        click.echo(f"spec {spec_path}: {len(cells) - len(missing)} of {len(cells)} cells done, "
                   f"{len(missing)} missing")
        for c in missing[:20]:
            click.echo(f"  missing {c.cell_id}: S={c.sample_size} seed={c.seed} "
                       f"model={c.model.family}")
        if len(missing) > 20:
            click.echo(f"  ... and {len(missing) - 20} more")
    if verify:
        bad = [(cid, state) for cid, state in checks if state != "ok"]
        click.echo(f"verify: {len(checks) - len(bad)} of {len(checks)} weights files match their "
                   "row's sha256")
        for cid, state in bad:
            click.echo(f"  {cid}: {state}")
        if any(not state.startswith("unrecorded") for _, state in bad):
            sys.exit(1)
