"""torch.tanh against resdyn's tanh (2 sigmoid(2 z) - 1), alternated in one run.

The tensor is the benchmark grid's activation: (189 chunks, 64 rows, 16 units), float32 and
float64. Each round times ``--reps`` calls of one side, then of the other (A B A B ...), and
prints both times and their ratio; the last lines give the median ratio with min and max, and the
largest difference between the two on 4 million points in [-30, 30] in units of eps.

Usage: python benchmarks/bench_activations.py [--threads 2] [--rounds 5] [--reps 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from resdyn.models.activations import get_activation


def per_call(fn, z: torch.Tensor, reps: int) -> float:
    fn(z)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(z)
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ours = get_activation("tanh")
    for dtype in (torch.float32, torch.float64):
        z = torch.randn(189, 64, 16, generator=torch.Generator().manual_seed(0), dtype=dtype)
        ratios = []
        for r in range(args.rounds):
            a = per_call(torch.tanh, z, args.reps)
            b = per_call(ours, z, args.reps)
            ratios.append(a / b)
            print(f"{dtype} round {r + 1}: torch.tanh {a * 1e6:8.1f} us | 2 sigmoid(2z) - 1 "
                  f"{b * 1e6:8.1f} us | ratio {a / b:5.2f}x", flush=True)
        grid = torch.linspace(-30, 30, 4_000_001, dtype=dtype)
        err = float((ours(grid).double() - torch.tanh(grid.double())).abs().max())
        print(f"{dtype}: speed-up median {statistics.median(ratios):.2f}x, min {min(ratios):.2f}x, "
              f"max {max(ratios):.2f}x; max |difference| {err:.3g} = "
              f"{err / torch.finfo(dtype).eps:.2f} eps ({args.threads} threads)")


if __name__ == "__main__":
    main()
