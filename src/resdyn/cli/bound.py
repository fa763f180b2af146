"""``resdyn bound STORE CELL_ID`` (or ``resdyn bound CHECKPOINT --data NAME -S S``): every bound of
docs/theory.md, with its terms, for one trained model on its training sample.

Given a store, the data set, sample size, seed and bound options are the cell's own, read from
the store: the printed ``test_error_bound`` is the one recorded in the cell's row.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click
import torch

from ..models.registry import check_model_fits
from ..theory.bounds import FAMILIES, BoundOptions, bound_terms
from .options import compute_options, setup_compute

GROUPS = ("path_norm_bound", "flow_bound", "dead_zone", "spectral_bound", "marion_bound",
          "test_error_bound")
BOUND_MEASURES = GROUPS


def _fail(msg: str) -> None:
    """One line on stderr, exit status 1."""
    click.echo(f"error: {msg}", err=True)
    sys.exit(1)


def _cell_inputs(store: Path, cell_id: str, options: dict):
    """model, params (axis 1), x, y, the cell's bound options and its description, from a store;
    a store, row or weights file that cannot give them is one error line."""
    from ..api import CellNotFoundError, load_cell
    from ..sweeps.store import StoreError

    try:
        cell = load_cell(store, cell_id)
    except CellNotFoundError as err:  # the command line named no cell: a usage error
        raise click.UsageError(str(err)) from None
    except StoreError as err:  # the store or the cell's weights are damaged
        _fail(str(err))
    typed = cell.cell
    try:
        # The options the sweep's bound measures ran with (they share one set), then the command
        # line's only where the spec was silent.
        stored = next((dict(typed.measures[m]) for m in BOUND_MEASURES if m in typed.measures), {})
        opts = {**options, **stored}
        data = cell.data()
        idx = cell.train_indices()
        check_model_fits(cell.model, data.input_shape, data.num_classes, "its data set")
        x = data.prepare(data.x[idx], torch.float64, "cpu")
    except (ValueError, TypeError, KeyError, IndexError, OSError) as err:
        _fail(f"store {store}: row {cell.cell_id!r}: its configuration does not give a data set "
              f"for the bound ({type(err).__name__}: {str(err)[:300]}); see `resdyn status "
              f"--verify {store}`")
    desc = f"{store} cell {cell.cell_id}: data {typed.data.name}, S={typed.sample_size}, seed={typed.seed}"
    return cell.model, cell.params, x, data.y[idx], opts, desc, cell.record


@click.command()
@click.argument("source", metavar="STORE_OR_CHECKPOINT", type=click.Path(exists=True, dir_okay=False))
@click.argument("cell_id", required=False)
@click.option("--data", "data_name", default=None,
              help="Data set name, for a checkpoint file (see `resdyn data list`).")
@click.option("--sample-size", "-S", type=click.IntRange(min=1), default=None,
              help="Training sample size S, for a checkpoint file.")
@click.option("--seed", type=int, default=None, help="Seed of the training subsample (checkpoint; "
              "default 0).")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Data folder of file-backed data sets (checkpoint file).")
@click.option("--model-index", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which model of a stacked checkpoint (leading model axis).")
@click.option("--delta", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
              default=0.05, show_default=True,
              help="Failure probability of the test-error bound (a store cell uses its spec's).")
@click.option("--kappa", type=click.FloatRange(min=2, min_open=True), default=4.0, show_default=True,
              help="Weight of the path norm (> 2; a store cell uses its spec's).")
@compute_options
def bound(source, cell_id, data_name, sample_size, seed, root, model_index, delta, kappa, device,
          dtype, threads) -> None:
    """Print each bound with its terms for a trained model on its training sample.

    \b
    resdyn bound runs/my.sqlite CELL_ID       a cell of a store: data, S, seed from the store
    resdyn bound model.safetensors --data two_spirals -S 256 [--seed 0]
    """
    setup_compute(device, dtype, threads)
    options = {"delta": delta, "kappa": kappa}
    record = None
    if cell_id is not None:
        if data_name or sample_size or seed is not None or root:
            raise click.UsageError("with STORE CELL_ID the data set, S and seed come from the store; "
                                   "drop --data, -S, --seed and --root")
        model, params, x, y, options, desc, record = _cell_inputs(Path(source), cell_id, options)
    else:
        model, params, x, y, desc = _checkpoint_inputs(source, data_name, sample_size, seed or 0,
                                                       root, model_index)
    try:
        terms = bound_terms(model, params, x, y, BoundOptions.from_dict(options))
    except (ValueError, TypeError) as err:
        _fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
    click.echo(f"{desc}; {model.family}, activation {model.act.name}, "
               + ", ".join(f"{k}={v}" for k, v in sorted(options.items())))
    click.echo(f"  train error {terms['train_error']:.4f}   x_rms {terms['x_rms']:.4g}")
    for g in GROUPS:
        v = terms.get(g, math.nan)
        click.echo(f"{g:18s} {v:.10g}" + ("  (not applicable)" if math.isnan(v) else ""))
        for k, val in terms.items():
            if k.startswith(g + "."):
                shown = (FAMILIES[int(val)] if k == "test_error_bound.family" and not math.isnan(val)
                         else f"{val:.6g}")
                click.echo(f"    {k[len(g) + 1:]:22s} {shown}")
    if record is not None and "test_error_bound" in record.measures:
        stored = record.measures["test_error_bound"]
        click.echo(f"test_error_bound stored in the row {stored!r}, recomputed now "
                   f"{terms['test_error_bound']!r}")


def _checkpoint_inputs(checkpoint, data_name, sample_size, seed, root, model_index):
    from ..data import load, subsample
    from ..models.io import CheckpointError, load_params

    if data_name is None or sample_size is None:
        raise click.UsageError("a checkpoint file needs --data and --sample-size (or give STORE "
                               "CELL_ID to read them from a store)")
    try:
        model, params, _ = load_params(checkpoint)
    except (CheckpointError, OSError) as err:
        _fail(str(err))
    shapes = model.init(torch.Generator().manual_seed(0), torch.float64, torch.device("meta"))
    if set(params) != set(shapes):
        _fail(f"{checkpoint} holds tensors {', '.join(sorted(params))[:200]}, not those of its "
              f"model ({', '.join(sorted(shapes))})")
    first = next(iter(params.values()))
    if first.dim() == shapes[next(iter(params))].dim():  # one model, no model axis
        params = {k: v.unsqueeze(0) for k, v in params.items()}
        first = next(iter(params.values()))
    bad = [k for k, v in params.items() if v.shape[1:] != shapes[k].shape or v.shape[0] != first.shape[0]]
    if bad:
        _fail(f"{checkpoint}: tensor {bad[0]} has shape {tuple(params[bad[0]].shape)}, not (models, "
              f"{', '.join(map(str, shapes[bad[0]].shape))}) as its model needs")
    if model_index >= first.shape[0]:
        raise click.UsageError(f"--model-index must be < {first.shape[0]} (models in the checkpoint)")
    params = {k: v[model_index : model_index + 1] for k, v in params.items()}
    try:
        data = load(data_name, root)
        idx = subsample(data, sample_size, seed)
    except (ValueError, FileNotFoundError) as err:
        raise click.UsageError(str(err)) from None
    try:
        check_model_fits(model, data.input_shape, data.num_classes, f"data set {data_name!r}")
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    x = data.prepare(data.x[idx], torch.float64, "cpu")
    desc = f"{checkpoint}: data {data_name}, S={sample_size}, seed={seed}"
    return model, params, x, data.y[idx], desc
