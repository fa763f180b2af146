"""``resdyn bound CHECKPOINT --data NAME --sample-size S``: every bound of docs/theory.md, with its
terms, for one trained model on its training sample."""

from __future__ import annotations

import math

import click
import torch

from ..models.io import load_params
from ..theory.bounds import BoundOptions, bound_terms
from .options import compute_options, setup_compute

GROUPS = ("path_norm_bound", "flow_bound", "dead_zone", "spectral_bound", "marion_bound",
          "test_error_bound")


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--data", "data_name", required=True, help="Data set name (see `resdyn data list`).")
@click.option("--sample-size", "-S", type=click.IntRange(min=1), required=True,
              help="Training sample size S the model was trained on.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the training subsample.")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Data folder of file-backed data sets.")
@click.option("--model-index", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which model of a stacked checkpoint (leading model axis).")
@click.option("--delta", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
              default=0.05, show_default=True, help="Failure probability of the test-error bound.")
@click.option("--kappa", type=click.FloatRange(min=2, min_open=True), default=4.0, show_default=True,
              help="Weight of the path norm (> 2).")
@compute_options
def bound(checkpoint, data_name, sample_size, seed, root, model_index, delta, kappa, device, dtype,
          threads) -> None:
    """Print each bound with its terms for the model in CHECKPOINT on its training sample."""
    setup_compute(device, dtype, threads)
    from ..data import load, subsample

    model, params, _ = load_params(checkpoint)
    first = next(iter(params.values()))
    if first.dim() == 0 or model_index >= first.shape[0]:
        raise click.UsageError(f"--model-index must be < {first.shape[0]} (models in the checkpoint)")
    params = {k: v[model_index : model_index + 1] for k, v in params.items()}
    try:
        data = load(data_name, root)
        idx = subsample(data, sample_size, seed)
    except (ValueError, FileNotFoundError) as err:
        raise click.UsageError(str(err)) from None
    x = data.prepare(data.x[idx], torch.float64, "cpu")
    try:
        terms = bound_terms(model, params, x, data.y[idx], BoundOptions(delta=delta, kappa=kappa))
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    click.echo(f"{checkpoint}: {model.family}, activation {model.act.name}, data {data_name}, "
               f"S={sample_size}, seed={seed}, delta={delta}, kappa={kappa}")
    click.echo(f"  train error {terms['train_error']:.4f}   x_rms {terms['x_rms']:.4g}")
    for g in GROUPS:
        v = terms.get(g, math.nan)
        click.echo(f"{g:18s} {v:.6g}" + ("  (not applicable)" if math.isnan(v) else ""))
        for k, val in terms.items():
            if k.startswith(g + "."):
                click.echo(f"    {k[len(g) + 1:]:22s} {val:.6g}")
