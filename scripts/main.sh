#!/usr/bin/env bash
# Set up the pinned environment in .venv and run the main job: the sample-size reproduction on
# its default data (two spirals and the 8x8 digits; MNIST/CIFAR too if their files are under
# ./data), stored in runs/reproduce.sqlite, then the report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/resdyn reproduce sample-size --store runs/reproduce.sqlite "$@"
.venv/bin/resdyn report runs/reproduce.sqlite --out runs/report
