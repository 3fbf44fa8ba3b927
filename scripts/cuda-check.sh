#!/usr/bin/env bash
# The `--features cuda,nccl` build checked on a machine without a GPU (scripts/test.sh runs it
# under CI=true or SSLC_CUDA_CHECK=1): assembles the CUDA 13.0 toolkit and NCCL from PyPI
# wheels, builds the release binary with candle's CUDA back end and NCCL (one build: `nccl`
# implies `cuda`), strips a copy (the one to carry to a GPU machine, docs/gpu.md) and checks its
# size, then runs it:
#   - `--device cuda` exits 1 with "no CUDA device found" and no panic,
#   - `--gpus 1` (one NCCL rank) exits 1 the same way, before starting any rank, and
#   - the same binary trains on the CPU (one epoch on the embedded digits).
# candle links libcuda, cublas, curand, nvrtc and cudart, and the `nccl` feature libnccl
# (cudarc's `dynamic-linking`), so the binary cannot start without them: the runs put the
# wheels' libraries and the toolkit's stub libcuda, whose every function returns
# CUDA_ERROR_NO_DEVICE as a driver does on a machine without a GPU, on LD_LIBRARY_PATH.
# Cached under target/ (toolkit 1.8 GB in target/cuda-toolkit, build in target/cuda): the first
# run downloads the wheels and spends ~5 minutes of nvcc on candle's kernels; a rerun with no
# change is seconds. SSLC_CUDA_TOOLKIT and SSLC_CUDA_TARGET_DIR move them.
#
# SSLC_CUDA_PROFILE=test (what CI uses) builds instead in the test profile, in target/ beside
# `cargo test`'s build and with SSLC_CUDA_FEATURES (CI adds its `mpi`), so that every
# dependency candle's `cuda` feature does not change is reused rather than built again in
# release mode: the same code compiled and linked, the same checks run, about ten minutes
# less on a clean clone. The binary to carry to a GPU machine is the release one (the default).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLKIT=${SSLC_CUDA_TOOLKIT:-$PWD/target/cuda-toolkit}
PROFILE=${SSLC_CUDA_PROFILE:-release}
FEATURES=${SSLC_CUDA_FEATURES:-cuda,nccl}
case "$PROFILE" in
    release) TARGET=${SSLC_CUDA_TARGET_DIR:-$PWD/target/cuda}; BIN="$TARGET/release/sslc" ;;
    test) TARGET=${SSLC_CUDA_TARGET_DIR:-$PWD/target}; BIN="$TARGET/debug/sslc" ;;
    *) echo "SSLC_CUDA_PROFILE must be release or test, not $PROFILE" >&2; exit 2 ;;
esac
start=$SECONDS
eval "$(bash scripts/cuda-from-wheels.sh "$TOOLKIT")"
CARGO_TARGET_DIR="$TARGET" cargo build --profile "$PROFILE" --features "$FEATURES" --quiet
mkdir -p "$PWD/target/cuda"
STRIPPED="$PWD/target/cuda/sslc-stripped"
[ "$PROFILE" = release ] || STRIPPED="$PWD/target/cuda/sslc-$PROFILE-stripped"
strip -o "$STRIPPED" "$BIN"
size=$(stat -c %s "$STRIPPED")
echo "cuda build ($PROFILE profile, --features $FEATURES): $((SECONDS - start)) s; stripped binary $((size / 1000000)) MB ($STRIPPED)"
# The carry limit to a GPU machine is 64 MiB in all, and the release binary is to stay under
# 60 MB: 37 MB on 2026-11-30 with compressed fatbins (cuda-from-wheels.sh's NVCC_APPEND_FLAGS;
# 65 MB without, 28 MB of it candle's quantized kernels). A test-profile binary is not carried.
if [ "$PROFILE" = release ] && [ "$size" -ge 60000000 ]; then
    echo "the stripped CUDA binary is $size bytes, over the 60 MB it must stay under (64 MiB may be carried to a" \
        "GPU machine); a build cached before fatbin compression needs: cargo clean -p candle-kernels" >&2
    exit 1
fi
export LD_LIBRARY_PATH="$CUDA_HOME/lib64/stubs:$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
scratch="$PWD/target/cuda/check"
rm -rf "$scratch"
for flags in "--device cuda" "--gpus 1"; do
    set +e
    # shellcheck disable=SC2086
    out=$("$STRIPPED" run objectives/simclr.ssl $flags --epochs 1 --out "$scratch/cuda" 2>&1)
    code=$?
    set -e
    if [ "$code" != 1 ] || ! grep -q "no CUDA device found" <<<"$out" || grep -q panicked <<<"$out" \
        || [ -e "$scratch/cuda" ]; then
        echo "$flags without a GPU should exit 1 with 'no CUDA device found' and write nothing; it exited $code:" >&2
        echo "$out" >&2
        exit 1
    fi
done
if ! out=$("$STRIPPED" run objectives/simclr.ssl --epochs 1 --probe-epochs 2 --out "$scratch/cpu" 2>&1) \
    || ! grep -q Few <<<"$out"; then
    echo "the CUDA build failed to train on the CPU:" >&2
    echo "$out" >&2
    exit 1
fi
echo "cuda build: --device cuda and --gpus 1 fail cleanly without a GPU, the CPU run trains ($((SECONDS - start)) s in all)"
