"""``resdyn run``, ``resdyn results``, ``resdyn status``: run a spec, read a store."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .._paths import check_name, inside
from ..sweeps.spec import SpecError, load_spec
from ..sweeps.store import Store, StoreError
from .options import setup_compute, terminate_like_interrupt


def default_store(spec_name: str) -> Path:
    """``runs/<spec name>.sqlite``; the name is checked against the name pattern and the path to
    stay inside ``runs/``."""
    inside("runs", f"{check_name('spec name', spec_name)}.sqlite")
    return Path("runs") / f"{spec_name}.sqlite"


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(1)


def execute_spec(spec, store, executor, device, threads, ray_address=None, quiet=False):
    """Run ``spec`` into ``store`` with a progress bar; shared by ``run`` and ``reproduce``."""
    from ..sweeps.executors import make_executor
    from ..sweeps.sweep import plan, run_sweep

    cells, done = plan(spec, store)
    todo = len([c for c in cells if c.cell_id not in done])
    opts = {"address": ray_address} if executor == "ray" else {}
    ex = make_executor(executor, device, threads, **opts)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]} models/s"), TimeRemainingColumn())
    with Progress(*columns, disable=quiet, transient=False) as bar:
        task = bar.add_task(spec.name, total=todo, rate="-")

        def on_group(results):
            secs = sum(r.timing.get("seconds_per_model", 0) for r in results)
            bar.update(task, advance=len(results),
                       rate=f"{len(results) / secs:.2f}" if secs > 0 else "-")

        with terminate_like_interrupt():  # SIGTERM unwinds like SIGINT: claims are released
            summary = run_sweep(spec, store, ex, device, on_group=on_group, cells=cells)
    return summary


@click.command()
@click.argument("spec_path", metavar="SPEC.toml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite store (default: runs/<spec name>.sqlite).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--ray-address", default=None, help="Ray cluster address (default: start a local one).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch threads per group (per Ray task with --executor ray).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run(spec_path, store, executor, ray_address, device, threads, quiet) -> None:
    """Run (or resume) the sweep in SPEC.toml: train the cells the store does not have."""
    setup_compute(device, "float32", threads)
    try:
        spec = load_spec(spec_path)
        store = store or default_store(spec.name)
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


def flatten_row(row: dict) -> dict:
    """A store row as one flat record: id, status, swept settings, metrics, measures, time."""
    cfg = row["config"]
    out = {"cell_id": row["cell_id"], "spec": row["spec"], "status": row["status"],
           "data": cfg["data"]["name"], "family": cfg["model"]["family"],
           "sample_size": cfg["sample_size"], "seed": cfg["seed"], "lr": cfg["train"]["lr"]}
    for k in ("depth", "knots", "width", "channels", "activation", "tau"):
        if k in cfg["model"]:
            out[k] = cfg["model"][k]
    out.update(row["metrics"])
    out.update(row["measures"])
    out["seconds_per_model"] = row["timing"].get("seconds_per_model")
    return out


@click.command()
@click.argument("store", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
def results(store, fmt) -> None:
    """Print one row per finished cell of STORE."""
    try:
        rows = [flatten_row(r) for r in _read(store, Store.rows)]
    except (KeyError, TypeError, AttributeError) as err:
        _fail(f"store {store}: a row lacks the settings of a resdyn cell ({type(err).__name__}: "
              f"{err}); the store is damaged or foreign")
    if fmt == "json":
        click.echo(json.dumps(rows, indent=1))
        return
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
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
                       f"model={c.config['model']['family']}")
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
