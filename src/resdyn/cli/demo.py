"""``resdyn demo``: a discrete and a continuous-time ResNet on two spirals, train/test and gap."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
import torch

from ..data.base import Dataset
from ..data.synthetic import two_spirals
from ..models.base import init_params
from ..models.ode_resnet import ODEResNet
from ..models.resnet import ResNet
from ..training.engine import TrainConfig, TrainState, train
from .options import compute_options, setup_compute


@contextmanager
def _bar(name: str, steps: int, quiet: bool) -> Iterator[Callable[[int, TrainState], None]]:
    """A progress bar (step, latest loss, ETA) fed by a training hook; gone when done."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(name), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]}"), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, disable=quiet or not Console().is_terminal, transient=True) as bar:
        task = bar.add_task(name, total=steps, loss="-")

        def hook(step: int, state: TrainState) -> None:
            loss = float(state.loss_history[step - 1].mean()) if step > 0 else float("nan")
            bar.update(task, completed=step, loss=f"{loss:.4f}" if step > 0 else "-")

        yield hook


@click.command()
@click.option("--sample-size", "-S", type=click.IntRange(min=2), default=1024, show_default=True,
              help="Training samples S.")
@click.option("--test-size", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--depth", "-L", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--width", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--steps", type=click.IntRange(min=0), default=1000, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@compute_options
def demo(sample_size, test_size, depth, width, steps, lr, seed, quiet, device, dtype,
         threads) -> None:
    """Train a discrete ResNet and a continuous-time ResNet (RK4) on two spirals.

    Prints train/test accuracy and the generalization gap of each.
    """
    dev, dt = setup_compute(device, dtype, threads)
    x, y = two_spirals(sample_size + test_size, seed=seed)
    data = Dataset("two_spirals", x[:sample_size], y[:sample_size], x[sample_size:],
                   y[sample_size:], 2)
    cfg = TrainConfig(steps=steps)
    models = {
        f"discrete ResNet (L={depth})": ResNet(width=width, depth=depth),
        f"continuous ResNet (P={depth}, rk4)": ODEResNet(width=width, knots=depth, method="rk4"),
    }
    click.echo(f"two spirals: S={sample_size} training, {test_size} test samples; "
               f"{steps} full-batch Adam steps, lr={lr}, {dt}, {dev}")
    for name, model in models.items():
        t0 = time.perf_counter()
        params = init_params(model, [seed], dt, dev)
        with _bar(name, steps, quiet) as hook:
            res = train(model, params, data, [torch.arange(sample_size)], lr=lr, config=cfg, seeds=[seed],
                        hooks=[(max(1, steps // 100), hook)])
        m = {k: float(v[0]) for k, v in res.metrics.items()}
        click.echo(f"{name:34s} train acc {m['train_acc']:.4f}  test acc {m['test_acc']:.4f}  "
                   f"gap {m['error_gap']:+.4f}  (loss gap {m['loss_gap']:+.4f}, "
                   f"{time.perf_counter() - t0:.1f}s)")
