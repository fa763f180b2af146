"""The fresh-data exploration behind the depth study's recipe 4 (docs/depth-prior.md): recipe 2's
cells, L = 16 and 256, Brownian prior, on 4,000-point samples of a fresh two-spirals draw
(generator seed 987,654: none of the study's bound halves or test sets), with the prior mean's
Adam rate constant (recipe 2, the control) or on a cosine schedule (the candidate). One JSON line
per (seed, L) to OUT; the summary (log KL ratios, certificate ratios) with --summary.

    python scripts/explore_prior_schedule.py constant 0,1,2,3,4,5,6,7 OUT
    python scripts/explore_prior_schedule.py --summary OUT [OUT ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
from pathlib import Path

import torch

from resdyn.data import load, subsample
from resdyn.models.base import init_params
from resdyn.models.resnet import ResNet
from resdyn.training.certify import certify_sample
from resdyn.training.engine import TrainConfig

FRESH = 987654  # the two-spirals generator seed: not the study's draw (seed 0)
_spec = importlib.util.spec_from_file_location("depth_certificates",
                                               Path(__file__).with_name("depth_certificates.py"))
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)


def run(schedule: str, seeds: list[int], out: Path) -> None:
    """Recipe 2's Brownian cells at L = 16 and 256 for each seed, the prior mean's rate on
    ``schedule`` ('constant' or 'cosine'), on the fresh draw; one JSON line per cell to ``out``."""
    torch.set_num_threads(1)
    S, width, steps, _ = study.PLANS["two_spirals"]
    base = load("two_spirals", seed=FRESH)
    for seed in seeds:
        for L in (16, 256):
            model = ResNet(in_dim=2, out_dim=2, width=width, depth=L, activation="tanh")
            o = certify_sample(model, init_params(model, [seed], torch.float32), base,
                               subsample(base, S, seed), seed, study.PRIOR_LR,
                               TrainConfig(steps=steps, batch_size=128, lr_schedule=schedule),
                               study.certificate_config("brownian", 2))
            keys = ("certificate", "kl", "scale", "holdout", "gibbs_bound", "prior_mean_bound_error",
                    "seconds")
            row = {"variant": schedule, "seed": seed, "L": L, **{k: o.numbers[k] for k in keys}}
            print(json.dumps(row), flush=True)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")


def summary(paths: list[Path]) -> None:
    """Per variant: KL(256) / KL(16) per seed, the mean and SD of its log, the certificate ratios."""
    rows = [json.loads(line) for p in paths for line in p.read_text().splitlines()]
    for variant in sorted({r["variant"] for r in rows}):
        by: dict[tuple[int, int], dict] = {}
        for r in rows:
            if r["variant"] == variant:
                if (r["seed"], r["L"]) in by:
                    raise SystemExit(f"{variant}: seed {r['seed']}, L = {r['L']} appears twice")
                by[r["seed"], r["L"]] = r
        seeds = sorted(s for s, L in by if L == 16 and (s, 256) in by)
        logs = [math.log(by[s, 256]["kl"] / by[s, 16]["kl"]) for s in seeds]
        certs = [by[s, 256]["certificate"] / by[s, 16]["certificate"] for s in seeds]
        print(f"{variant}: {len(seeds)} seeds; KL(256) / KL(16) "
              f"{', '.join(f'{math.exp(x):.2f}' for x in logs)}; mean log {statistics.mean(logs):.3f}, "
              f"SD {statistics.stdev(logs):.3f}; certificate ratios {', '.join(f'{c:.3f}' for c in certs)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--summary", nargs="+", type=Path, default=None, metavar="OUT")
    ap.add_argument("args", nargs="*")
    a = ap.parse_args()
    if a.summary:
        summary(a.summary)
        return
    if len(a.args) != 3 or a.args[0] not in ("constant", "cosine"):
        ap.error("expected SCHEDULE SEEDS OUT, SCHEDULE 'constant' or 'cosine', SEEDS like 0,1,2")
    schedule, seeds, out = a.args
    run(schedule, [int(s) for s in seeds.split(",")], Path(out))


if __name__ == "__main__":
    main()
