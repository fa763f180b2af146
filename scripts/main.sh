#!/usr/bin/env bash
# Set up the pinned environment in .venv and run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/resdyn demo "$@"
