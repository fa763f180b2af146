"""Grouped training (``resdyn run``) against the plain per-model loop, alternated in one run.

The grid: two spirals, S = 64, 128, ..., 2048, 3 seeds, discrete ResNet of depth 8 and width 16
(tanh), 1000 full-batch Adam steps, lr 1e-2: 18 models.

* A, grouped: ``resdyn run SPEC --store TMP`` (imports and store writes included);
* B, per-model: the same models one after another, each an ``nn.Module`` with default
  ``torch.optim.Adam``, data preloaded as tensors, no per-step ``.item()``.

Each side runs in a fresh subprocess with the same thread count, and the sides alternate
A B A B ... for ``--rounds`` rounds, so that load from other processes on a shared machine falls
on both. Printed: every round's two wall times and their ratio, the median ratio with min-max,
the achieved GFLOP/s of each side (analytic count below), the fraction of this machine's
large-matrix-product throughput (measured between rounds, in this run), and the peak memory of
each side (peak resident set on the CPU, peak allocated device memory on a GPU).

FLOPs per sample and step: forward 2 (d m + L (m p + p m) + m k) (a multiply-add counted as 2
FLOPs), training = 3 x forward (the backward pass costs about twice the forward).

``--device cuda``: the grid has >= 1000 models (56 seeds x 3 learning rates x 6 sizes) and the
per-model loop is timed on a random subset of ``--baseline-models`` cells and scaled up by the
number of cells (the printout says so).

``--models N`` (CPU): additionally train an N-model grid of the same shape (sizes cycling over S,
one seed per model) with the engine for ``--scale-steps`` steps in a subprocess, training and
evaluation chunked to ``--max-rows`` rows, and print its peak memory and time per step (memory
does not grow with the number of steps).

Usage: python benchmarks/bench_grouping.py [--threads N] [--steps 1000] [--rounds 3]
       [--device cpu|cuda] [--baseline-models K] [--models 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
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


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def per_model_loop(cells: list[tuple[int, int, float]], steps: int, device: str) -> None:
    from resdyn.data import load, subsample

    data = load("two_spirals")
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
    _sync(device)


def grouped_run(spec: str, store: str, threads: int, device: str) -> None:
    from resdyn.cli.main import main as cli

    cli(["run", spec, "--store", store, "--quiet", "--threads", str(threads), "--device", device],
        standalone_mode=False)
    _sync(device)


def scale_run(n_models: int, steps: int, max_rows: int) -> dict:
    from resdyn.data import load, subsample
    from resdyn.models import ResNet, init_params
    from resdyn.training import TrainConfig, train

    data = load("two_spirals")
    model = ResNet(width=M, depth=L, activation="tanh")
    seeds = list(range(n_models))
    idx = [subsample(data, SIZES[e % len(SIZES)], e) for e in seeds]
    params = init_params(model, seeds)
    t0 = time.perf_counter()
    res = train(model, params, data, idx, lr=1e-2, config=TrainConfig(steps=steps), seeds=seeds,
                max_rows=max_rows)
    t = time.perf_counter() - t0
    return {"rows": sum(len(i) for i in idx), "seconds": t,
            "finite": bool(torch.isfinite(res.metrics["test_loss"]).all())}


def peak_memory(device: str) -> float:
    """Bytes: peak allocated device memory (cuda) or peak resident set of this process (cpu)."""
    if device == "cuda":
        return float(torch.cuda.max_memory_allocated())
    # VmHWM belongs to this process's own address space; ru_maxrss would not do: Linux keeps it
    # across execve, so a child would report its parent's peak when that is larger.
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024.0  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # kilobytes on Linux


def matmul_peak(device: str, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2.0 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def child(args: argparse.Namespace) -> None:
    """One side, in this fresh process: print a JSON line with its peak memory (and extras)."""
    torch.set_num_threads(args.threads)
    cells = [tuple(c) for c in json.loads(args.cells)] if args.cells else []
    out: dict = {}
    if args.side == "loop":
        per_model_loop(cells, args.steps, args.device)
    elif args.side == "grouped":
        grouped_run(args.spec, args.store, args.threads, args.device)
    else:
        out = scale_run(args.models, args.scale_steps, args.max_rows)
    out["peak_bytes"] = peak_memory(args.device)
    print("RESULT " + json.dumps(out), flush=True)


def run_side(argv: list[str], threads: int) -> tuple[float, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, *argv], check=True, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")][-1]
    return wall, json.loads(line[7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--baseline-models", type=int, default=18,
                    help="GPU only: cells of the per-model loop actually timed (then scaled).")
    ap.add_argument("--models", type=int, default=0,
                    help="also train an N-model grid with the engine and print its peak memory")
    ap.add_argument("--scale-steps", type=int, default=10)
    ap.add_argument("--max-rows", type=int, default=1 << 17)
    ap.add_argument("--side", choices=["loop", "grouped", "scale"], help=argparse.SUPPRESS)
    ap.add_argument("--cells", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        child(args)
        return
    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        seeds, lrs = list(range(56)), [1e-2, 5e-3, 2e-3]   # 6 x 56 x 3 = 1008 models
    else:
        seeds, lrs = [0, 1, 2], [1e-2]
    cells = [(S, s, lr) for S in SIZES for s in seeds for lr in lrs]
    flops = train_flops([c[0] for c in cells], args.steps)
    timed = cells
    if args.device == "cuda" and args.baseline_models < len(cells):
        timed = random.Random(0).sample(cells, args.baseline_models)
    scale = len(cells) / len(timed)
    common = ["--threads", str(args.threads), "--steps", str(args.steps), "--device", args.device]

    print(f"grid: {len(cells)} models (S in {SIZES}, {len(seeds)} seeds, {len(lrs)} lr), depth {L}, "
          f"width {M}, tanh, {args.steps} full-batch Adam steps, {args.threads} threads, "
          f"{args.device}, {args.rounds} rounds alternating A (grouped) B (per-model)")
    if scale != 1:
        print(f"per-model loop timed on {len(timed)} random cells and scaled by "
              f"{len(cells)}/{len(timed)} = {scale:.1f}")
    print(f"analytic training FLOPs: {flops / 1e9:.1f} GFLOP")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "bench.toml"
        spec.write_text(spec_text(args.steps, seeds, lrs, group_size=len(cells)))
        for r in range(args.rounds):
            store = str(Path(tmp) / f"bench{r}.sqlite")
            ta, ma = run_side(["--side", "grouped", "--spec", str(spec), "--store", store, *common],
                              args.threads)
            tb, mb = run_side(["--side", "loop", "--cells", json.dumps(timed), *common], args.threads)
            tb *= scale
            peak = matmul_peak(args.device)
            rows.append((ta, tb, tb / ta, peak, ma["peak_bytes"], mb["peak_bytes"]))
            print(f"round {r + 1}: grouped {ta:7.2f} s ({flops / ta / 1e9:6.2f} GFLOP/s, "
                  f"{ma['peak_bytes'] / 2**20:7.1f} MiB peak) | per-model {tb:7.2f} s "
                  f"({flops / tb / 1e9:6.2f} GFLOP/s, {mb['peak_bytes'] / 2**20:7.1f} MiB peak) | "
                  f"ratio {tb / ta:5.2f}x | matmul {peak:7.1f} GFLOP/s", flush=True)
    ratios = [r[2] for r in rows]
    peak = statistics.median(r[3] for r in rows)
    ta, tb = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
    print(f"large matmul throughput (median of {len(rows)}): {peak:.1f} GFLOP/s")
    for name, t in (("grouped (median)", ta), ("per-model (median)", tb)):
        rate = flops / t / 1e9
        print(f"{name:20s} {t:8.2f} s  {rate:7.2f} GFLOP/s  ({100 * rate / peak:.1f}% of matmul)")
    print(f"speed-up per-model / grouped: median {statistics.median(ratios):.2f}x, "
          f"min {min(ratios):.2f}x, max {max(ratios):.2f}x (rounds: "
          + ", ".join(f"{x:.2f}" for x in ratios) + ")")
    if args.models:
        _, out = run_side(["--side", "scale", "--models", str(args.models), "--scale-steps",
                              str(args.scale_steps), "--max-rows", str(args.max_rows), *common],
                             args.threads)
        print(f"{args.models}-model grid ({out['rows']} rows, {args.scale_steps} steps, training "
              f"and evaluation chunked to {args.max_rows} rows): peak memory "
              f"{out['peak_bytes'] / 2**30:.2f} GiB (limit 4 GiB), {out['seconds']:.1f} s "
              f"({out['seconds'] / max(args.scale_steps, 1):.2f} s per step incl. evaluation), "
              f"metrics finite: {out['finite']}")


if __name__ == "__main__":
    main()
