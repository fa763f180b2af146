"""Options shared by the commands: device, dtype, threads."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import click
import torch

from .._checks import max_threads, resolve_device, resolve_dtype

__all__ = ["compute_options", "setup_compute", "terminate_like_interrupt", "threads_option"]


def threads_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--threads N``: an integer from 1 to the CPU cores this process may use."""
    return click.option("--threads", type=click.IntRange(min=1, max=max_threads()), default=None,
                        help=f"{help_text} At most {max_threads()} (the CPU cores here).")


def compute_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add --device, --dtype and --threads to a command."""
    f = threads_option("CPU threads for torch (default: torch's choice).")(f)
    f = click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32",
                     show_default=True, help="Floating-point precision.")(f)
    f = click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu",
                     show_default=True, help="Where to compute; 'cuda' needs a GPU.")(f)
    return f


def setup_compute(device: str, dtype: str, threads: int | None) -> tuple[torch.device, torch.dtype]:
    """Resolve the compute options, as a one-line usage error when they cannot be met."""
    try:
        dev, dt = resolve_device(device), resolve_dtype(dtype)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    if threads is not None:
        torch.set_num_threads(threads)
    return dev, dt


@contextlib.contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt as SIGINT does, so a terminated run
    unwinds: its claims are released and it says so, instead of vanishing mid-write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
