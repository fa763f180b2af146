"""``resdyn reproduce NAME``: run a paper's claim as one command, then analyse it from the store."""

from __future__ import annotations

import inspect
import sys
import tempfile
from pathlib import Path

import click

from ..experiments.registry import REPRODUCTIONS, get_reproduction
from ..sweeps.spec import SpecError, load_spec, spec_path
from ..sweeps.store import Store, StoreError
from .options import setup_compute
from .sweep import execute_spec


def _claims_text(outcome) -> str:
    lines = []
    for c in outcome.claims:
        word = {"held": "held", "not held": "NOT held"}.get(c.verdict, c.verdict)
        lines.append(f"  [{word}] {c.text}: {c.measured}")
    return "\n".join(lines)


def _image_sets(root: Path | None, say, names: tuple[str, ...]) -> list[str]:
    """The image data sets of ``names`` whose files load (checksums included) under ``root``."""
    from ..data import load
    from ..data.integrity import DataError

    found = []
    for name in names:
        if root is None:
            continue
        try:
            load(name, root)
        except (DataError, OSError) as err:
            say(f"{name}: not used ({str(err).splitlines()[0]})")
            continue
        found.append(name)
    return found


def run_reproduction(name: str, quick: bool, store: Path, executor: str, device: str,
                     threads: int | None, dtype: str | None, quiet: bool = False,
                     root: Path | None = None, say=lambda msg: None):
    """Run reproduction ``name`` into ``store`` and return its analysed outcome."""
    from ..reports.build import outcome_to_json

    repro = get_reproduction(name)
    label = f"{name}-quick" if quick else name
    with tempfile.TemporaryDirectory() as tmp:
        if repro.run is not None:
            import torch

            kwargs = {"quick": quick, "out_dir": Path(tmp), "device": device, "threads": threads}
            if dtype is not None:
                kwargs["dtype"] = getattr(torch, dtype)
            if "store" in inspect.signature(repro.load("run")).parameters:  # runs that write cells
                kwargs.update(store=store, say=say)
            outcome = repro.load("run")(**kwargs)
            outcome.name = label
            with Store(store) as st:  # the report reads the outcome back from the store
                st.save_outcome(label, outcome_to_json(outcome))
            return outcome
        from dataclasses import replace

        runs = [load_spec(spec_path(s)) for s in repro.spec_names(quick)]
        image_specs = repro.image_spec_names(quick)
        sets = _image_sets(root, say, repro.image_sets) if image_specs else []
        if image_specs and not runs and not sets:
            raise ValueError(f"{name} needs one of {', '.join(repro.image_sets)} under the data root "
                             f"{str(root or 'data')!r}; run `resdyn data fetch mnist` (and "
                             "`resdyn data fetch fashion-mnist`), or pass --root")
        for data_name in sets:
            for s in image_specs:
                spec = load_spec(spec_path(s))
                runs.append(replace(spec, data={"name": data_name, "root": str(root)}))
        done = set()
        for spec in runs:
            if dtype is not None:
                spec = replace(spec, run=replace(spec.run, dtype=dtype))
            execute_spec(spec, store, executor, device, threads, quiet=quiet)
            done.add(spec.name)
        with Store(store, create=False) as st:
            rows = [r for r in st.records(series=True) if r.spec in done]
        return repro.load("analyze")(rows, None, label)


@click.command()
@click.argument("name", type=click.Choice(list(REPRODUCTIONS)))
@click.option("--quick", is_flag=True, help="The small variant (a few minutes on 2 CPU cores).")
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("runs/reproduce.sqlite"), show_default=True)
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default=None,
              help="Override the spec's dtype.")
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("data"),
              show_default=True, help="Data root searched for MNIST/CIFAR files (torchvision layout).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def reproduce(name, quick, store, executor, device, dtype, threads, root, quiet) -> None:
    """Reproduce claim NAME: run its sweep (resuming from STORE), analyse, print the claims.

    Sweep reproductions ship their specs (resdyn/specs/NAME.toml, NAME-quick.toml), which
    `resdyn run` also runs. Write the report with `resdyn report STORE --out DIR`.
    """
    setup_compute(device, dtype or "float32", threads)
    try:
        outcome = run_reproduction(name, quick, store, executor, device, threads, dtype, quiet,
                                   root if root.is_dir() else None, click.echo)
    except (SpecError, StoreError, ValueError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    click.echo(f"{outcome.name}: store {store}")
    click.echo(_claims_text(outcome) or "  (no claims could be evaluated)")
