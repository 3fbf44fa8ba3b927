#!/usr/bin/env bash
# The test command (README, and .ci/run): installs what the tests need, then runs them.
# A test whose data or library is absent skips with a visible notice; under CI=true that
# absence fails the test instead, so CI proves everything ran.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each phase's wall time, printed as it ends, so a slow CI run names its slow part.
phase_start=$SECONDS
phase() { echo "test.sh: $1 took $((SECONDS - phase_start)) s" >&2; phase_start=$SECONDS; }

# Fashion-MNIST in IDX format, from Debian (the fashion-mnist-lt benchmark's default path).
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  echo "installing dataset-fashion-mnist (Debian) ..." >&2
  { apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }; } >/dev/null 2>&1 \
    || echo "notice: could not install dataset-fashion-mnist; its tests will skip" >&2
fi

# NVRTC for the CUDA back end's compile tests (no GPU needed): the PyPI wheel, into the
# git-ignored .tools/. Without it those tests print a notice and skip, except under CI=true.
NVRTC_WHEEL="nvidia-cuda-nvrtc-cu12==12.9.86"
NVRTC_DIR=".tools/nvrtc"
NVRTC_LIB="$NVRTC_DIR/nvidia/cuda_nvrtc/lib"
if [ ! -e "$NVRTC_LIB/libnvrtc.so.12" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$NVRTC_DIR" "$NVRTC_WHEEL" \
        || echo "NOTICE: could not install $NVRTC_WHEEL; the NVRTC tests will skip" >&2
fi
if [ -e "$NVRTC_LIB/libnvrtc.so.12" ]; then
    export LD_LIBRARY_PATH="$PWD/$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

# TensorBoard, to read the event files a run writes (tests/tools_cli.rs): the PyPI package into
# the git-ignored .tools/ (about 12 s and 160 MB, measured 2026-11-29). Without it that check
# prints a notice and skips, except under CI=true.
TENSORBOARD_DIR=".tools/tensorboard"
if [ ! -e "$TENSORBOARD_DIR/tensorboard/__init__.py" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$TENSORBOARD_DIR" "tensorboard==2.21.0" \
        || echo "NOTICE: could not install tensorboard; the TensorBoard check will skip" >&2
fi

# torch and torchvision (CPU), to load an exported backbone and compare its features with
# sslc's (tests/tools_cli.rs): Debian's packages for the system python3, since PyPI's x86-64
# torch pulls in the CUDA libraries (gigabytes). About 70 s and 154 MB of downloads (660 MB
# installed), measured 2026-11-29, well inside CI's budget, so CI runs the check.
if ! /usr/bin/python3 -c 'import torch, torchvision' >/dev/null 2>&1 && command -v apt-get >/dev/null; then
  echo "installing python3-torch and python3-torchvision (Debian) ..." >&2
  { apt-get install -y -q --no-install-recommends python3-torch python3-torchvision \
      || { apt-get update -q && apt-get install -y -q --no-install-recommends python3-torch python3-torchvision; }; } >/dev/null 2>&1 \
    || echo "NOTICE: could not install python3-torch; the torchvision check will skip" >&2
fi

# OpenMPI and libclang (Debian), for the `mpi` feature that the tests build with and
# tests/distributed.rs's `mpirun` runs. Without them the build and those tests cannot run with
# MPI; this says so, and the tests then fail under CI=true.
MPI_FEATURE=(--features mpi)
if { ! command -v mpirun >/dev/null || [ ! -e /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ] \
     || ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; } && command -v apt-get >/dev/null; then
    echo "installing openmpi-bin libopenmpi-dev libclang-dev (Debian) ..." >&2
    { apt-get install -y -q --no-install-recommends openmpi-bin libopenmpi-dev libclang-dev \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends openmpi-bin libopenmpi-dev libclang-dev; }; } >/dev/null 2>&1 \
        || echo "NOTICE: could not install OpenMPI; building without the mpi feature, the MPI tests will skip" >&2
fi
if ! command -v mpicc >/dev/null; then
    MPI_FEATURE=()
    [ "${CI:-}" = true ] && { echo "OpenMPI is missing and CI=true requires the MPI tests" >&2; exit 1; }
fi

# The law before the tests: formatting (rustfmt.toml) and every clippy warning. Both tools
# come with the rustup toolchain; without them (no network to add them) this says so, and
# fails under CI=true.
for tool in fmt clippy; do
    if ! cargo "$tool" --version >/dev/null 2>&1; then
        echo "NOTICE: cargo $tool is not installed (rustup component add ${tool/fmt/rustfmt})" >&2
        [ "${CI:-}" = true ] && exit 1
    fi
done
phase "installing what the tests need"
if cargo fmt --version >/dev/null 2>&1 && ! cargo fmt --all --check >/dev/null; then
    echo "cargo fmt --all --check failed: run 'cargo fmt --all'" >&2
    cargo fmt --all --check | head -40 >&2 || true
    exit 1
fi
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --workspace --all-targets --quiet "${MPI_FEATURE[@]}" -- -D warnings
fi

phase "fmt and clippy"
cargo test --workspace --all-targets "${MPI_FEATURE[@]}" --no-run --quiet "$@"
phase "building the tests"
cargo test --workspace --all-targets "${MPI_FEATURE[@]}" "$@"
phase "running the tests"

# The shipped objectives in `sslc fmt`'s layout (the binary the tests just built; instant).
target/debug/sslc fmt --check objectives/

# The CUDA build (`--features cuda,nccl`: candle's CUDA back end and NCCL), so a change that
# breaks it fails CI: built from PyPI wheels, stripped and size-checked, `--device cuda` and
# `--gpus 1` checked to fail cleanly without a GPU and the CPU path to train
# (scripts/cuda-check.sh). Under CI=true, or with SSLC_CUDA_CHECK=1. Built in the test profile
# beside the tests' build, reusing every dependency the `cuda` feature leaves alone; the
# toolkit is cached in target/cuda-toolkit (cost: see the README).
if [ "${CI:-}" = true ] || [ "${SSLC_CUDA_CHECK:-}" = 1 ]; then
    cuda_features=cuda,nccl
    [ "${#MPI_FEATURE[@]}" = 0 ] || cuda_features=cuda,nccl,mpi
    SSLC_CUDA_PROFILE=test SSLC_CUDA_FEATURES=$cuda_features bash scripts/cuda-check.sh
    phase "the CUDA check"
fi

# The VS Code extension packaged as a .vsix (scripts/vsix.sh: vsce from the npm registry; about
# 25 s on a clean clone, 4 s with target/vsix kept), under CI=true or with SSLC_VSIX=1.
if [ "${CI:-}" = true ] || [ "${SSLC_VSIX:-}" = 1 ]; then
    if command -v npm >/dev/null; then
        bash scripts/vsix.sh
        phase "the VS Code extension"
    else
        echo "NOTICE: npm is missing; the VS Code extension (.vsix) is not packaged" >&2
        [ "${CI:-}" = true ] && exit 1
    fi
fi

# Coverage-guided fuzzing of the front end (fuzz/fuzz_targets/compile.rs) for a fixed time, the
# shipped objectives as seed corpus: FUZZ_SECONDS (60 under CI=true, otherwise 0 = skipped).
# It needs the nightly toolchain (sanitizers) and cargo-fuzz, which is installed into
# target/tools on first use; the instrumented build lives in target/fuzz. About 8 minutes of
# build on two cores, measured 2026-11-29. Any crash fails the run and leaves its input in
# fuzz/artifacts/.
FUZZ_SECONDS="${FUZZ_SECONDS:-$([ "${CI:-}" = true ] && echo 60 || echo 0)}"
if [ "$FUZZ_SECONDS" -gt 0 ]; then
    if ! rustup run nightly rustc --version >/dev/null 2>&1; then
        echo "NOTICE: no nightly toolchain (rustup toolchain install nightly); cargo fuzz skipped" >&2
        [ "${CI:-}" = true ] && exit 1
    else
        [ -x target/tools/bin/cargo-fuzz ] || cargo install --quiet --locked cargo-fuzz@0.13.2 --root target/tools
        mkdir -p target/fuzz-corpus
        if ! PATH="$PWD/target/tools/bin:$PATH" CARGO_TARGET_DIR="$PWD/target/fuzz" cargo +nightly fuzz run --fuzz-dir fuzz -O \
            compile target/fuzz-corpus objectives -- -max_total_time="$FUZZ_SECONDS" -max_len=8192 >target/fuzz.log 2>&1; then
            tail -60 target/fuzz.log >&2
            echo "cargo fuzz failed (a crash leaves its input in fuzz/artifacts/compile/; log: target/fuzz.log)" >&2
            exit 1
        fi
        echo "cargo fuzz: $(grep -E '^Done' target/fuzz.log | tail -1)"
        phase "cargo fuzz"
    fi
fi
