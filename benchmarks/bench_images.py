"""A 16-model image grid through the engine against the idiomatic per-model loop, alternated.

The grid: 28x28 one-channel images (full MNIST when it is under ./data, else random images of
the same shape: the time does not depend on the pixels), S = 500, 1000, 2000, 4000 with 4 seeds
each (16 models), the staged ``image_resnet`` of the image specs (stem 8 -> 16 channels at 7x7,
depth L = 4, relu), minibatches of 64, Adam, ``--steps`` steps.

* A, engine: ``resdyn.training.train`` on all 16 models as one batched computation (every
  convolution one grouped convolution over the models), data from the pool by index.
* B, per-model: the same network written as an ``nn.Module`` with ``nn.Conv2d``/``nn.Linear``,
  default ``torch.optim.Adam``, trained one model after another on its own minibatches drawn
  from the same preloaded tensor, no per-step ``.item()``.

Both sides run in this process with the same thread count (``--threads``), alternating A B A B
for ``--rounds`` rounds, so load from other processes on a shared machine falls on both. Printed:
every round's two times, the ratio B / A (above 1: the engine is faster), the median with min-max,
and the achieved GFLOP/s of each side. FLOPs per image and step: forward 2 x (multiply-adds of
every convolution and the readout), training = 3 x forward.

Usage: python benchmarks/bench_images.py [--threads 2] [--steps 100] [--rounds 5] [--models 16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from resdyn.data.base import Dataset
from resdyn.models import ImageResNet, init_params
from resdyn.training.engine import TrainConfig, train

SIZES = [500, 1000, 2000, 4000]
MODEL = ImageResNet(stem_channels=8, channels=16, depth=4, activation="relu")
BATCH = 64


def load_images() -> Dataset:
    try:
        from resdyn.data import load

        return load("mnist")
    except Exception:  # no MNIST under ./data: random images, the same shapes and dtype
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (8000, 1, 28, 28), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 10, (8000,), generator=g)
        return Dataset("random-images", x, y, x[:0], y[:0], num_classes=10)


class LoopNet(nn.Module):
    """The image ResNet of the grid as a plain module (same maps, same shapes)."""

    def __init__(self, m: ImageResNet) -> None:
        super().__init__()
        s, C = m.stem_channels, m.channels
        self.stem = nn.ModuleList([nn.Conv2d(1, s, 3, padding=1), nn.Conv2d(s, s, 4, 2, 1),
                                   nn.Conv2d(s, C, 4, 2, 1)])
        self.W = nn.ModuleList([nn.Conv2d(C, C, 3, padding=1) for _ in range(m.depth)])
        self.V = nn.ModuleList([nn.Conv2d(C, C, 3, padding=1, bias=False) for _ in range(m.depth)])
        self.readout = nn.Linear(C, m.out_dim)
        self.h = m.step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.relu(self.stem[0](x))
        z = self.stem[2](F.relu(self.stem[1](z)))
        for W, V in zip(self.W, self.V, strict=True):
            z = z + self.h * V(F.relu(W(z)))
        return self.readout(z.mean(dim=(2, 3)))


def grid(models: int) -> list[tuple[int, int]]:
    return [(SIZES[i % len(SIZES)], i // len(SIZES)) for i in range(models)]


def engine_side(data: Dataset, cells: list[tuple[int, int]], steps: int) -> None:
    params = init_params(MODEL, [seed for _, seed in cells])
    idx = [torch.randperm(len(data.y), generator=torch.Generator().manual_seed(seed))[:S]
           for S, seed in cells]
    cfg = TrainConfig(steps=steps, batch_size=BATCH, chunk_size=BATCH)
    train(MODEL, params, data, idx, lr=1e-3, config=cfg, seeds=[seed for _, seed in cells],
          evaluate_test=False)


def loop_side(data: Dataset, cells: list[tuple[int, int]], steps: int) -> None:
    x_all = data.prepare(data.x, torch.float32, "cpu")
    for S, seed in cells:
        torch.manual_seed(seed)
        net = LoopNet(MODEL)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        idx = torch.randperm(len(data.y), generator=torch.Generator().manual_seed(seed))[:S]
        order = idx[torch.randperm(S)]
        pos = 0
        for _ in range(steps):
            if pos + BATCH > S:
                order, pos = idx[torch.randperm(S)], 0
            b = order[pos : pos + BATCH]
            pos += BATCH
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x_all[b]), data.y[b]).backward()
            opt.step()


def train_flops(models: int, steps: int) -> float:
    s, C, L, k = MODEL.stem_channels, MODEL.channels, MODEL.depth, MODEL.out_dim
    macs = 28 * 28 * s * 9 + 14 * 14 * s * s * 16 + 7 * 7 * s * C * 16 + L * 2 * 7 * 7 * C * C * 9 + C * k
    return 3.0 * 2 * macs * BATCH * steps * models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--models", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data, cells = load_images(), grid(args.models)
    flops = train_flops(args.models, args.steps)
    print(f"{args.models} models (S {SIZES}, {args.models // len(SIZES)} seeds), {args.steps} steps of "
          f"{BATCH} images, {args.threads} threads, data {data.name}; {flops / 1e9:.1f} GFLOP per side")
    engine_side(data, cells[:2], 3)  # warm-up: first-call allocations and kernel selection
    loop_side(data, cells[:2], 3)
    ratios = []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        engine_side(data, cells, args.steps)
        ta = time.perf_counter() - t0
        t0 = time.perf_counter()
        loop_side(data, cells, args.steps)
        tb = time.perf_counter() - t0
        ratios.append(tb / ta)
        print(f"round {r + 1}: engine {ta:7.2f} s ({flops / ta / 1e9:6.1f} GFLOP/s) | per-model loop "
              f"{tb:7.2f} s ({flops / tb / 1e9:6.1f} GFLOP/s) | ratio {tb / ta:5.2f}x", flush=True)
    print(f"median ratio {statistics.median(ratios):.2f}x (min {min(ratios):.2f}x, max {max(ratios):.2f}x) "
          f"over {args.rounds} rounds")


if __name__ == "__main__":
    main()
