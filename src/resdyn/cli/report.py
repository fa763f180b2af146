"""``resdyn report STORE --out DIR``: the HTML report and Markdown summary of a store."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..sweeps.store import StoreError


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
    except StoreError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    html_path, md_path = write_report(outcomes, out_dir, title)
    held = sum(c.held for o in outcomes for c in o.claims)
    total = sum(len(o.claims) for o in outcomes)
    click.echo(f"report: {html_path.resolve()}")
    click.echo(f"summary: {md_path.resolve()}")
    sweeps = sum(o.data.get("kind") == "sweep" for o in outcomes)
    click.echo(f"{sweeps} sweeps and {len(outcomes) - sweeps} reproductions reported, {held} of "
               f"{total} claims held")
