"""Grouped training (``resdyn run``) against the plain per-model loop, side by side.

The grid: two spirals, S = 64, 128, ..., 2048, 3 seeds, discrete ResNet of depth 8 and width 16
(tanh), 1000 full-batch Adam steps, lr 1e-2: 18 models.

* grouped: ``resdyn run SPEC --store TMP`` in a subprocess (imports and store writes included);
* per-model: the same 18 models one after another, each an ``nn.Module`` with default
  ``torch.optim.Adam``, data preloaded as tensors, no per-step ``.item()``.

Both use the same thread count. The script prints both wall times, their ratio, the achieved
GFLOP/s of each (from an analytic count of training FLOPs, below) and the fraction of this
machine's large-matrix-product throughput, measured in the same run.

FLOPs per sample and step: forward 2 (d m + L (m p + p m) + m k) multiply-adds counted as 2
FLOPs each, and training = 3 x forward (the backward pass costs about twice the forward).

On a GPU (``--device cuda``) the grid has >= 1000 models (more seeds and learning rates) and the
per-model loop is timed on a random subset of ``--baseline-models`` cells and scaled up, as
printed.

Usage: python benchmarks/bench_grouping.py [--threads N] [--steps 1000] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

D, M, P, K, L = 2, 16, 16, 2, 8
SIZES = [64, 128, 256, 512, 1024, 2048]


def spec_text(steps: int, seeds: list[int], lrs: list[float], group_size: int) -> str:
    return textwrap.dedent(f"""
        name = "bench-grouping"
        [data]
        name = "two_spirals"
        [model]
        family = "resnet"
        width = {M}
        depth = {L}
        activation = "tanh"
        [train]
        steps = {steps}
        [sweep]
        sample_size = {SIZES}
        seed = {seeds}
        lr = {lrs}
        [run]
        group_size = {group_size}
        checkpoint_seconds = 1e9
    """)


def train_flops(sizes: list[int], steps: int) -> float:
    fwd = 2 * (D * M + L * (M * P + P * M) + M * K)
    return 3.0 * fwd * steps * sum(sizes)


class PlainResNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(D, M)
        self.W = torch.nn.ModuleList(torch.nn.Linear(M, P) for _ in range(L))
        self.V = torch.nn.ModuleList(torch.nn.Linear(P, M, bias=False) for _ in range(L))
        self.out = torch.nn.Linear(M, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x)
        for W, V in zip(self.W, self.V, strict=True):
            z = z + (1.0 / L) * V(torch.tanh(W(z)))
        return self.out(z)


def per_model_loop(cells: list[tuple[int, int, float]], steps: int, device: str) -> float:
    from resdyn.data import load, subsample

    data = load("two_spirals")
    t0 = time.perf_counter()
    for S, seed, lr in cells:
        torch.manual_seed(seed)
        idx = subsample(data, S, seed)
        x = data.prepare(data.x[idx], torch.float32, device)
        y = data.y[idx].to(device)
        net = PlainResNet().to(device)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def matmul_peak(device: str, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2.0 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--baseline-models", type=int, default=18,
                    help="GPU only: cells of the per-model loop actually timed (then scaled).")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        seeds, lrs = list(range(56)), [1e-2, 5e-3, 2e-3]   # 6 x 56 x 3 = 1008 models
    else:
        seeds, lrs = [0, 1, 2], [1e-2]
    cells = [(S, s, lr) for S in SIZES for s in seeds for lr in lrs]
    sizes = [c[0] for c in cells]
    flops = train_flops(sizes, args.steps)

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "bench.toml"
        spec.write_text(spec_text(args.steps, seeds, lrs, group_size=len(cells)))
        cmd = [sys.executable, "-m", "resdyn.cli", "run", str(spec), "--store",
               str(Path(tmp) / "bench.sqlite"), "--quiet", "--threads", str(args.threads),
               "--device", args.device]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        t_grouped = time.perf_counter() - t0

    timed = cells
    if args.device == "cuda" and args.baseline_models < len(cells):
        timed = random.Random(0).sample(cells, args.baseline_models)
    t_loop_timed = per_model_loop(timed, args.steps, args.device)
    t_loop = t_loop_timed * len(cells) / len(timed)
    peak = matmul_peak(args.device)

    print(f"grid: {len(cells)} models (S in {SIZES}, {len(seeds)} seeds, {len(lrs)} lr), depth {L}, "
          f"width {M}, {args.steps} full-batch Adam steps, {args.threads} threads, {args.device}")
    if len(timed) != len(cells):
        print(f"per-model loop timed on {len(timed)} random cells ({t_loop_timed:.1f}s) and scaled "
              f"by {len(cells)}/{len(timed)}")
    print(f"analytic training FLOPs: {flops / 1e9:.1f} GFLOP")
    print(f"large matmul throughput: {peak:.1f} GFLOP/s")
    for name, t in (("resdyn run (grouped)", t_grouped), ("per-model loop", t_loop)):
        rate = flops / t / 1e9
        print(f"{name:22s} {t:8.2f} s  {rate:7.2f} GFLOP/s  ({100 * rate / peak:.1f}% of matmul peak)")
    print(f"speed-up (per-model / grouped): {t_loop / t_grouped:.2f}x")


if __name__ == "__main__":
    main()
