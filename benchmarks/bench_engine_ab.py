"""The engine of two commits on the benchmark grid, alternated in one run: is a change faster?

The grid is that of ``bench_grouping.py`` (two spirals, S = 64..2048 x 3 seeds = 18 models, a
depth-8 width-16 tanh ResNet, full-batch Adam, lr 1e-2). Each side is the package source of one
git revision (checked out with ``git worktree`` into a temporary folder; ``WORKTREE`` means the
working tree as it is), run in a fresh process with the same thread count: it trains 5 warm-up
steps, then ``--steps`` steps, and reports milliseconds per step (imports, data and evaluation
excluded). The sides alternate A B A B ... for ``--rounds`` rounds; every round's two times and
their ratio are printed, then the median ratio with min and max.

Usage: python benchmarks/bench_engine_ab.py --base REV [--head WORKTREE] [--threads 2]
       [--steps 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_grouping import SIZES, L, M  # the grid of the benchmark, defined once

ROOT = Path(__file__).resolve().parent.parent


def child(steps: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from resdyn.data import load, subsample
    from resdyn.models import ResNet, init_params
    from resdyn.training import TrainConfig, train

    data = load("two_spirals")
    model = ResNet(width=M, depth=L, activation="tanh")
    cells = [(S, s) for S in SIZES for s in range(3)]
    seeds = [s for _, s in cells]
    idx = [subsample(data, S, s) for S, s in cells]
    params = init_params(model, seeds)
    train(model, params, data, idx, lr=1e-2, config=TrainConfig(steps=5), seeds=seeds, evaluate_test=False)
    t0 = time.perf_counter()
    train(model, params, data, idx, lr=1e-2, config=TrainConfig(steps=steps), seeds=seeds,
          evaluate_test=False)
    ms = (time.perf_counter() - t0) / steps * 1e3
    print("RESULT " + json.dumps({"ms_per_step": ms, "source": str(Path(
        __import__("resdyn").__file__).parent)}), flush=True)


def source_of(rev: str, tmp: Path) -> Path:
    if rev == "WORKTREE":
        return ROOT / "src"
    where = tmp / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(where), rev],
                   check=True)
    return where / "src"


def run_side(src: Path, steps: int, threads: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(steps), "--threads",
                          str(threads)], env=env, check=True, capture_output=True, text=True).stdout
    res = json.loads([s for s in out.splitlines() if s.startswith("RESULT ")][-1][7:])
    if Path(res["source"]).resolve() != (src / "resdyn").resolve():
        raise RuntimeError(f"the side meant to run {src} imported {res['source']}")
    return float(res["ms_per_step"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--base", help="git revision of side A (e.g. a commit before a change)")
    ap.add_argument("--head", default="WORKTREE", help="side B: a git revision or WORKTREE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.steps, args.threads)
        return
    if not args.base:
        ap.error("--base REV is required")
    with tempfile.TemporaryDirectory() as tmp:
        a_src, b_src = source_of(args.base, Path(tmp)), source_of(args.head, Path(tmp))
        try:
            print(f"A = {args.base}, B = {args.head}: 18 models, {args.steps} full-batch steps, "
                  f"{args.threads} threads, {args.rounds} rounds alternating A B")
            ratios = []
            for r in range(args.rounds):
                a = run_side(a_src, args.steps, args.threads)
                b = run_side(b_src, args.steps, args.threads)
                ratios.append(a / b)
                print(f"round {r + 1}: A {a:7.2f} ms/step | B {b:7.2f} ms/step | A / B {a / b:5.2f}x",
                      flush=True)
            print(f"A / B: median {statistics.median(ratios):.2f}x, min {min(ratios):.2f}x, "
                  f"max {max(ratios):.2f}x (rounds: " + ", ".join(f"{x:.2f}" for x in ratios) + ")")
        finally:
            for src in (a_src, b_src):
                if src != ROOT / "src":
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                    str(src.parent)], check=False)


if __name__ == "__main__":
    main()
