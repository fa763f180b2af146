"""Progress reporting inside training: a rich bar, a user callable, or nothing.

The bar shows steps done, the latest mean objective over models, models per second (E times the
fraction of steps done, per second of wall time) and the time left, extrapolated from the steps
done so far in this call. Reading the objective synchronises with the device, so the bar does it
at most every ``refresh`` seconds, never every step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from torch import Tensor

__all__ = ["ProgressFn", "make_progress"]

ProgressFn = Callable[[int, int, Tensor], None]


class _Silent:
    def __call__(self, step: int, J: Tensor) -> None:
        pass

    def close(self) -> None:
        pass


class _Callback(_Silent):
    def __init__(self, fn: ProgressFn, total: int):
        self.fn, self.total = fn, total

    def __call__(self, step: int, J: Tensor) -> None:
        self.fn(step, self.total, J)


class _Bar(_Silent):
    def __init__(self, E: int, total: int, start: int, refresh: float = 0.25):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.E, self.total, self.start, self.refresh = E, total, start, refresh
        self.t0 = self.last = time.perf_counter()
        self.bar = Progress(TextColumn("training {task.fields[models]} models"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                            TextColumn("{task.fields[rate]} models/s"), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn(), transient=False)
        self.task = self.bar.add_task("train", total=total, completed=start, models=E, loss="-",
                                      rate="-")
        self.bar.start()

    def __call__(self, step: int, J: Tensor) -> None:
        now = time.perf_counter()
        if now - self.last < self.refresh and step < self.total:
            return
        self.last = now
        finite = J[J.isfinite()]
        loss = f"{float(finite.mean()):.4g}" if finite.numel() else "nan"
        rate = self.E * (step - self.start) / self.total / max(now - self.t0, 1e-9)
        self.bar.update(self.task, completed=step, loss=loss, rate=f"{rate:.3g}")

    def close(self) -> None:
        self.bar.stop()


def make_progress(progress: bool | ProgressFn, E: int, total: int, start: int) -> _Silent:
    if progress is True:
        return _Bar(E, total, start)
    if progress is False or progress is None:
        return _Silent()
    if callable(progress):
        return _Callback(progress, total)
    raise ValueError(f"progress must be True, False or a callable fn(step, total, J), got {progress!r}")
