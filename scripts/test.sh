#!/usr/bin/env bash
# The test command (README, and .ci/run): installs what the tests need, then runs them.
# Under CI=true a missing dataset or library is a failure, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

# NVRTC for the CUDA back end's compile tests (no GPU needed): the PyPI wheel, into the
# git-ignored .tools/. Without it those tests print a notice and skip, except under CI=true.
NVRTC_WHEEL="nvidia-cuda-nvrtc-cu12==12.9.86"
NVRTC_DIR=".tools/nvrtc"
NVRTC_LIB="$NVRTC_DIR/nvidia/cuda_nvrtc/lib"
if [ ! -e "$NVRTC_LIB/libnvrtc.so.12" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$NVRTC_DIR" "$NVRTC_WHEEL" \
        || echo "NOTICE: could not install $NVRTC_WHEEL; the NVRTC tests will skip" >&2
fi
if [ -e "$NVRTC_LIB/libnvrtc.so.12" ]; then
    export LD_LIBRARY_PATH="$PWD/$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

cargo test --workspace --all-targets "$@"
