"""``resdyn certify STORE CELL_ID [--rounds R]``: recompute a stored certificate cell's PAC-Bayes
certificate from its stored weights (prior mean m, whitened posterior u, the chosen scale) with
fresh Monte-Carlo draws, and print every term beside the stored one.

The split of the sample, the normalisation, the prior and the KL are recomputed from the cell's
configuration and weights, so they come back exactly; only the Gibbs error on the bound half is
estimated again, from the streams ``(seed, 'certificate/recheck/r')`` (the stored certificate
used ``'certificate/bound/r'``). The printed standard errors say how far the new certificate may
fairly lie from the stored one.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click

from .options import setup_compute

__all__ = ["certify"]

STREAM = "certificate/recheck"


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(1)


def _fmt(v: float | int | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.6g}" if math.isfinite(v) else str(v)


def _load(store: Path, cell_id: str):
    """(record, prior mean, whitened posterior, the baseline's whitened posterior or None), each
    with a model axis of 1."""
    from ..api import CellNotFoundError, certificate_weights, find_cell
    from ..sweeps.store import Store, StoreError

    try:
        with Store(store, create=False) as st:
            record = find_cell(st, cell_id)
            mean, u, base = certificate_weights(st, record)
    except CellNotFoundError as err:
        raise click.UsageError(str(err)) from None
    except StoreError as err:
        _fail(str(err))
    return record, mean, u, base


def _compare(stored: dict, prefix: str, new, sample_size: int) -> None:
    """The stored terms (``prefix`` + name) beside the recomputed ones, and how far apart they are
    in Monte-Carlo standard errors."""
    click.echo(f"{'term':28s} {'stored':>12s} {'new':>12s}")
    rows = [
        ("bound examples n", stored.get("n"), new.n),
        ("prior examples |S_p|", stored.get("prior_size", sample_size - int(stored.get("n", 0))),
         new.prior_size),
        ("prior scale s", stored.get(f"{prefix}scale"), new.scale),
        ("KL(Q || P)", stored.get(f"{prefix}kl"), new.kl),
        ("draws m", stored.get("draws"), new.draws),
        ("Gibbs error on S_b", stored.get(f"{prefix}gibbs_bound"), new.gibbs_bound),
        ("sample risk bound", stored.get(f"{prefix}sample_risk_bound"), new.sample_risk_bound),
        ("PAC-Bayes term", stored.get(f"{prefix}pac_bayes_term"), new.pac_bayes_term),
        ("certificate", stored.get(f"{prefix}certificate"), new.certificate),
    ]
    for name, old, now in rows:
        counts = ("bound examples n", "prior examples |S_p|", "draws m")
        old = int(old) if name in counts and old is not None else old
        click.echo(f"{name:28s} {_fmt(old):>12s} {_fmt(now):>12s}")
    click.echo(f"{'Gibbs standard error':28s} {'':>12s} {_fmt(new.gibbs_se):>12s}")
    click.echo(f"{'certificate standard error':28s} {'':>12s} {_fmt(new.certificate_se):>12s}")
    g_old = float(stored[f"{prefix}gibbs_bound"])
    se_old = math.sqrt(max(g_old * (1 - g_old), 1 / stored["draws"]) / stored["draws"])
    g_diff = new.gibbs_bound - g_old
    click.echo(f"new - stored Gibbs error: {g_diff:+.6g} ({g_diff / math.hypot(new.gibbs_se, se_old):+.2f} "
               f"standard errors of the difference)")
    if new.draws != int(stored["draws"]):
        click.echo(f"the certificate tightens with the number of draws m ({int(stored['draws'])} "
                   f"stored, {new.draws} new): compare the Gibbs error, not the certificate")
        return
    diff = new.certificate - float(stored[f"{prefix}certificate"])
    click.echo(f"new - stored certificate: {diff:+.6g} ({diff / new.certificate_se:+.2f} standard "
               f"errors of the new certificate; draws from '{STREAM}', the stored ones from "
               "'certificate/bound')")


@click.command()
@click.argument("store", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("cell_id")
@click.option("--rounds", type=click.IntRange(min=1, max=10_000), default=None,
              help="Draws per bound example (default: the cell's certificate.rounds).")
@click.option("--threads", type=click.IntRange(min=1), default=None)
def certify(store: Path, cell_id: str, rounds: int | None, threads: int | None) -> None:
    """Recompute the certificate of certificate cell CELL_ID of STORE with fresh draws (and the
    data-independent baseline's, when the cell has one)."""
    import torch

    from ..models.base import init_params
    from ..training.certify import recertify

    setup_compute("cpu", "float32", threads)
    record, mean, u, base_u = _load(store, cell_id)
    cell, stored, cfg = record.cell, record.metrics, record.cell.certificate
    data = cell.data.load()
    sample = cell.data.indices(data, cell.sample_size, cell.seed)
    depth = getattr(cell.model, "depth", None)
    click.echo(f"{store} cell {record.cell_id}: {cell.data.name}, S={cell.sample_size}, "
               f"seed={cell.seed}, {cell.model.family} "
               f"{'continuous time' if depth is None else f'depth L={depth}'}, prior {cfg.prior}; "
               f"delta={cfg.delta:g}, delta_mc={cfg.delta_mc:g}, attempts={cfg.attempts}: the "
               f"PAC-Bayes-kl term at delta/{cfg.attempts}={cfg.delta / cfg.attempts:g}, the "
               f"Monte-Carlo term at delta_mc/{cfg.attempts}={cfg.delta_mc / cfg.attempts:g}")
    new = recertify(cell.model, mean, u, float(stored["scale"]), data, sample, cell.seed, cfg, rounds,
                    STREAM)
    click.echo("prior learned on S_p:")
    _compare(stored, "", new, cell.sample_size)
    if base_u is not None:
        dtype = next(iter(base_u.values())).dtype
        init = init_params(cell.model, [cell.init_seed], dtype, torch.device("cpu"))
        again = recertify(cell.model, init, base_u, float(stored["baseline_scale"]), data, sample,
                          cell.seed, cfg, rounds, STREAM)
        click.echo("data-independent prior (the initialisation):")
        _compare(stored, "baseline_", again, cell.sample_size)
