#!/usr/bin/env bash
# The test command (README, and .ci/run): installs what the tests need, then runs them.
# A test whose data or library is absent skips with a visible notice; under CI=true that
# absence fails the test instead, so CI proves everything ran.
set -euo pipefail
cd "$(dirname "$0")/.."

# Fashion-MNIST in IDX format, from Debian (the fashion-mnist-lt benchmark's default path).
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  echo "installing dataset-fashion-mnist (Debian) ..." >&2
  { apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }; } >/dev/null 2>&1 \
    || echo "notice: could not install dataset-fashion-mnist; its tests will skip" >&2
fi

cargo test --workspace --all-targets "$@"
