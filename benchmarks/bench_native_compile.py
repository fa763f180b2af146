"""torch.compile of the two-layer ResNet against the native kernel, alternated in one process.

The grid is that of ``bench_grouping.py`` (two spirals, S = 64..2048 x 3 seeds = 18 models, a
depth-8 width-16 tanh ResNet, float32), trained as the engine lays it out: every model's rows in
chunks of 64, chunk b run by model owner[b]. It is cut into ``--groups`` groups of models (by S,
so the groups have different numbers of chunks, as a sweep's groups do), all in this one process.
A step of a group is the forward of its chunks, the mean cross-entropy per model summed over
models, and the gradient with respect to every parameter (no optimiser update: it is the same
on both sides).

* A, compiled: ``torch.compile`` (inductor, ``dynamic=False``: one static graph per group) of
  that loss on the torch path with the plain autograd recursion
  (:func:`resdyn.models.reference.reference_resnet` on the weights gathered per chunk),
  differentiated by the compiled backward. Each group is compiled and run
  ``--warmup`` times before any timing (the compile times are printed), so every round is
  steady state with a warm cache.
* B, native: the same loss eagerly through ``models.base.forward_chunks``, i.e. the custom op of
  ``csrc/resnet.c`` reading each model's weights in place.

Each round runs ``--steps`` steps of every group on side A, then on side B (the order flips every
round), and prints both times per step (summed over groups) and their ratio A / B; at the end the
median, min and max ratio. Both sides must agree: the loss and gradients of A and B are compared
once (float32 tolerance) before timing.

Usage: python benchmarks/bench_native_compile.py [--threads 2] [--steps 50] [--rounds 5]
       [--groups 3] [--warmup 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_grouping import SIZES, L, M  # the grid of the benchmark, defined once

CHUNK = 64


def make_groups(n_groups: int) -> list[dict]:
    from resdyn.data import load, subsample
    from resdyn.models import ResNet, init_params

    data = load("two_spirals")
    model = ResNet(width=M, depth=L, activation="tanh")
    cells = [(S, s) for S in SIZES for s in range(3)]
    per = -(-len(cells) // n_groups)
    groups = []
    for g in range(0, len(cells), per):
        part = cells[g:g + per]
        params = init_params(model, [s + 10 * S for S, s in part])
        xs, ys, owner, weight = [], [], [], []
        for e, (S, s) in enumerate(part):
            idx = subsample(data, S, s)
            for start in range(0, S, CHUNK):
                rows = idx[start:start + CHUNK]
                xs.append(data.x[rows].float())
                ys.append(data.y[rows])
                owner.append(e)
                weight.append(1.0 / S)
        groups.append({"model": model, "params": params, "x": torch.stack(xs),
                       "y": torch.stack(ys), "owner": torch.tensor(owner),
                       "weight": torch.tensor(weight), "sizes": [S for S, _ in part]})
    return groups


def loss_of(out: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum over models of the mean cross-entropy of its rows (chunk weights 1 / S)."""
    ce = torch.nn.functional.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none")
    return (ce.view(y.shape) * weight.unsqueeze(1)).sum()


def compiled_side(act):
    from resdyn.models.reference import reference_resnet

    def loss(params, x, y, owner, weight, h):
        gathered = {k: v.index_select(0, owner) for k, v in params.items()}
        out = reference_resnet(gathered, x, h, act)
        return loss_of(out, y, weight)

    # dynamic=False: one static graph per group, compile's best case for steady-state speed.
    return torch.compile(loss, dynamic=False)


def native_loss(group: dict) -> torch.Tensor:
    from resdyn.models.base import forward_chunks

    out = forward_chunks(group["model"], group["leaves"], group["x"], group["owner"])
    return loss_of(out, group["y"], group["weight"])


def step(group: dict, side: str, compiled) -> list[torch.Tensor]:
    leaves = list(group["leaves"].values())
    if side == "A":
        loss = compiled(group["leaves"], group["x"], group["y"], group["owner"], group["weight"],
                        group["model"].step)
    else:
        loss = native_loss(group)
    return [loss.detach(), *torch.autograd.grad(loss, leaves)]


def timed(groups: list[dict], side: str, compiled, steps: int) -> float:
    """Milliseconds per step, summed over the groups."""
    total = 0.0
    for g in groups:
        t0 = time.perf_counter()
        for _ in range(steps):
            step(g, side, compiled)
        total += (time.perf_counter() - t0) / steps
    return total * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--groups", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from resdyn.models import native

    groups = make_groups(args.groups)
    for g in groups:
        g["leaves"] = {k: v.clone().requires_grad_(True) for k, v in g["params"].items()}
    compiled = compiled_side(groups[0]["model"].act)
    print(f"{len(groups)} groups (models by S: {[g['sizes'] for g in groups]}), chunks of {CHUNK} "
          f"rows, width {M}, depth {L}, float32, {args.threads} threads, {args.steps} steps per "
          f"group and side, {args.rounds} rounds")
    for i, g in enumerate(groups):
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            a = step(g, "A", compiled)
        native.reset_usage()
        b = step(g, "B", None)
        if not native.provenance()["native_kernel"]:
            raise SystemExit("side B did not run the native kernel (no compiler? RESDYN_NATIVE=0?)")
        for u, v in zip(a, b, strict=True):
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)
        print(f"group {i + 1}: {g['x'].shape[0]} chunks; compile and {args.warmup} warm-up steps "
              f"{time.perf_counter() - t0:.1f} s; A and B agree", flush=True)
    ratios = []
    for r in range(args.rounds):
        order = ("A", "B") if r % 2 == 0 else ("B", "A")
        ms = {side: timed(groups, side, compiled, args.steps) for side in order}
        ratios.append(ms["A"] / ms["B"])
        print(f"round {r + 1} ({order[0]} first): A compiled {ms['A']:7.2f} ms/step | B native "
              f"{ms['B']:7.2f} ms/step | A / B {ratios[-1]:5.2f}x", flush=True)
    print(f"A / B: median {statistics.median(ratios):.2f}x, min {min(ratios):.2f}x, "
          f"max {max(ratios):.2f}x (rounds: " + ", ".join(f"{x:.2f}" for x in ratios) + ")")


if __name__ == "__main__":
    main()
