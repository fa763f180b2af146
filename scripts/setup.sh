#!/usr/bin/env bash
# Create .venv with the pinned dependencies (constraints.txt) and resdyn installed editable.
#   bash scripts/setup.sh          the package
#   bash scripts/setup.sh test     the package, the test tools, Ray, and headless Chromium
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
extras=""
if [ "${1:-}" = "test" ]; then
    extras="[test,ray]"
    if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                chromium chromium-driver >/dev/null) \
                || echo "warning: could not install chromium; the browser test will be skipped" >&2
        fi
    fi
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".${extras}"
