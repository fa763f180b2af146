#!/usr/bin/env bash
# Set up the pinned environment in .venv and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
set +e
.venv/bin/python -m pytest "$@"
rc=$?
# pytest exits 5 when it collected no test; that is a failure of the suite, not a pass.
[ "$rc" -eq 5 ] && echo "pytest collected no tests" >&2
exit "$rc"
