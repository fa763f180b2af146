"""Executors: where groups train. In-process (default) or Ray tasks; the driver alone writes.

Both yield ``(group, results)`` as groups finish. The Ray executor sends each group to a task
that pins its torch thread count, retries a group whose worker died (``max_retries``), and
returns results to the driver.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .._checks import max_threads
from .cells import Cell
from .runner import CheckpointIO, WarmStart, train_group
from .store import CellResult

__all__ = ["EXECUTORS", "LocalExecutor", "RayExecutor", "make_executor"]

EXECUTORS = ("local", "ray")


class LocalExecutor:
    """Groups one after another in this process. ``progress``: passed to ``train_group`` (a
    callable ``(step, steps, mean_loss)``, for a progress bar that moves within a group)."""

    def __init__(self, device: str = "cpu", threads: int | None = None):
        self.device, self.threads = device, threads
        self.progress = None

    def run(self, groups: Sequence[Sequence[Cell]], checkpoint: CheckpointIO | None = None,
            checkpoint_seconds: float = 120.0, warm: Mapping[str, WarmStart] | None = None
            ) -> Iterator[tuple[Sequence[Cell], list[CellResult]]]:
        import torch

        if self.threads is not None:
            # A spec's run.threads written for a bigger machine runs on the cores there are here.
            torch.set_num_threads(min(self.threads, max_threads()))
        for g in groups:
            yield g, train_group(g, self.device, checkpoint, checkpoint_seconds, warm, self.progress)


def _remote_train(cells: list[Cell], device: str, threads: int, pid_dir: str | None,
                  warm: Mapping[str, WarmStart] | None = None) -> list[CellResult]:
    import torch

    torch.set_num_threads(threads)
    if pid_dir is not None:
        # Lets a supervisor (or a test) see which worker runs which group.
        with open(os.path.join(pid_dir, f"{os.getpid()}.pid"), "w") as f:
            f.write(",".join(c.cell_id for c in cells))
    return train_group(cells, device, None, warm=warm)


class RayExecutor:
    """Each group a Ray task with ``threads`` CPUs; a task whose worker dies is retried.

    address: an existing cluster ('auto' or host:port), or None to start a local instance with
    ``num_cpus`` CPUs. Checkpoints are not written from workers (the driver alone writes).
    """

    def __init__(self, device: str = "cpu", threads: int = 1, address: str | None = None,
                 num_cpus: int | None = None, max_retries: int = 3, pid_dir: str | None = None):
        try:
            import ray
        except ImportError:
            raise RuntimeError("the Ray executor needs Ray: pip install 'resdyn[ray]'") from None
        self.ray = ray
        self.device, self.threads = device, threads
        self.max_retries, self.pid_dir = max_retries, pid_dir
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is not None:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=num_cpus, **kwargs)
        self._task = ray.remote(_remote_train).options(num_cpus=threads, max_retries=max_retries)

    def run(self, groups: Sequence[Sequence[Cell]], checkpoint: CheckpointIO | None = None,
            checkpoint_seconds: float = 120.0, warm: Mapping[str, WarmStart] | None = None
            ) -> Iterator[tuple[Sequence[Cell], list[CellResult]]]:
        del checkpoint, checkpoint_seconds
        pending = {}
        for g in groups:
            mine = {c.cell_id: warm[c.cell_id] for c in g if warm and c.cell_id in warm}
            pending[self._task.remote(list(g), self.device, self.threads, self.pid_dir, mine)] = g
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            ref = done[0]
            yield pending.pop(ref), self.ray.get(ref)


def make_executor(name: str, device: str = "cpu", threads: int | None = None,
                  **options: Any) -> LocalExecutor | RayExecutor:
    if name == "local":
        return LocalExecutor(device, threads)
    if name == "ray":
        return RayExecutor(device, threads or 1, **options)
    raise ValueError(f"executor must be one of {', '.join(map(repr, EXECUTORS))}; got {name!r}")
