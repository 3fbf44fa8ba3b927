#!/usr/bin/env bash
# Takes docs/images/lsp-hover.png: Monaco in headless Chromium, its hover answered by a real
# `sslc lsp` (see server.js and shoot.js). Needs node 20+ and Chromium (/usr/bin/chromium,
# or CHROMIUM=...); SSLC names the binary, target/debug/sslc by default.
#
#   editors/screenshot/run.sh [OUT.png]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export SSLC="$(realpath -m "${SSLC:-$root/target/debug/sslc}")"
[ -x "$SSLC" ] || { echo "run.sh: no sslc at $SSLC (cargo build, or set SSLC)" >&2; exit 1; }
out="$(realpath -m "${1:-$root/docs/images/lsp-hover.png}")"

cd "$here"
# npm downloads are cached under target/, which is git-ignored and reused by reruns; node_modules
# here is git-ignored too. --prefer-offline: a warm cache answers without asking the registry.
npm ci --cache "$root/target/npm-cache" --prefer-offline --no-audit --no-fund --loglevel=error
node shoot.js "$out"
