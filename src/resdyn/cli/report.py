"""``resdyn report STORE --out DIR``: the HTML report and Markdown summary of a store."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..sweeps.store import StoreError

#: What an analysis raises on values it cannot use (a damaged or hand-edited store).
_ROW_FAULTS = (KeyError, TypeError, ValueError, IndexError, AttributeError, ArithmeticError,
               RecursionError)


def _fail(msg: str) -> None:
    """One line on stderr, exit status 1."""
    click.echo(f"error: {msg}", err=True)
    sys.exit(1)


@click.command()
@click.argument("store", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("report"), show_default=True)
@click.option("--title", default="resdyn report", show_default=True)
def report(store, out_dir, title) -> None:
    """Report on every sweep in STORE: write report.html (self-contained), report.md,
    report-data.json and figures/ (PNG, PDF, SVG).

    Every spec in the store gets a section: each metric and measure against each swept setting,
    with seed intervals. Shipped reproductions add their analysis and claims on top.
    """
    from ..reports.build import outcomes_from_store
    from ..reports.render import write_report

    try:
        outcomes = outcomes_from_store(store, out_dir / "figures")
        html_path, md_path = write_report(outcomes, out_dir, title)
    except StoreError as err:
        _fail(str(err))
    except _ROW_FAULTS as err:
        # Rows that passed the store's shape checks but whose values an analysis cannot use.
        _fail(f"store {store}: its rows cannot be reported ({type(err).__name__}: "
              f"{' '.join(str(err).split())[:300]}); the store is damaged or foreign: see "
              f"`resdyn status --verify {store}`")
    held = sum(c.held for o in outcomes for c in o.claims)
    total = sum(len(o.claims) for o in outcomes)
    click.echo(f"report: {html_path.resolve()}")
    click.echo(f"summary: {md_path.resolve()}")
    sweeps = sum(o.data.get("kind") == "sweep" for o in outcomes)
    click.echo(f"{sweeps} sweeps and {len(outcomes) - sweeps} reproductions reported, {held} of "
               f"{total} claims held")
