#!/usr/bin/env bash
# Assemble a CUDA 13.0 toolkit folder from PyPI wheels, so `cargo build --features cuda`
# (candle's CUDA backend, which runs nvcc at build time) works on a machine with no CUDA.
# Usage: eval "$(bash scripts/cuda-from-wheels.sh /tmp/cuda13)"   (docs/gpu.md)
# NCCL (the `nccl` feature links libnccl.so.2) comes from the nvidia-nccl-cu13 wheel, pinned to
# 2.28, older than cudarc's bindings (2.30): a link against it fails if sslc ever calls a
# function that older NCCLs, such as the one beside PyTorch on a GPU machine, lack.
# Pinned to 13.0.x on purpose: cudarc 0.19.10's build script rejects 13.5, and nvcc 13.5
# emits PTX ISA 9.5, which a CUDA 13.0 driver (the lent H200 has driver 580) refuses.
# No wheel ships libcuda, so a stub is generated from cuda.h: every function returns
# CUDA_ERROR_NO_DEVICE (100), which is what a real driver reports on a machine without a GPU.
# It serves the link, and CI puts it on LD_LIBRARY_PATH so the CUDA binary starts there and
# `--device cuda` fails cleanly (scripts/test.sh); on a GPU machine the driver's libcuda.so.1
# is used instead.
set -euo pipefail
D=${1:-/tmp/cuda13}
mkdir -p "$D/whl"
if [ ! -x "$D/site/nvidia/cu13/bin/nvcc" ]; then
  pip download -q --no-deps -d "$D/whl" nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
    nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.1.1.3 nvidia-curand==10.4.0.35 >&2
  pip install -q --no-deps --target "$D/site" "$D"/whl/*.whl >&2
fi
# Its own --target: pip does not merge a wheel into an existing nvidia/ folder there.
NCCL="$D/nccl/nvidia/nccl/lib/libnccl.so.2"
if [ ! -e "$NCCL" ]; then
  pip download -q --no-deps -d "$D/whl-nccl" nvidia-nccl-cu13==2.28.9 >&2
  pip install -q --no-deps --target "$D/nccl" "$D"/whl-nccl/*.whl >&2
fi
T="$D/site/nvidia/cu13"; C="$D/cuda"
rm -rf "$C"; mkdir -p "$C/lib64/stubs"
ln -s "$T/bin" "$C/bin"; ln -s "$T/include" "$C/include"; ln -s "$T/nvvm" "$C/nvvm"; ln -s lib64 "$C/lib"
for f in "$T"/lib/*.so* "$T"/lib/*.a; do [ -e "$f" ] && ln -s "$f" "$C/lib64/"; done
ln -s "$NCCL" "$C/lib64/"
for s in nccl.so.2 cudart.so.13 nvrtc.so.13 cublas.so.13 cublasLt.so.13 curand.so.10; do
  ln -sf "lib$s" "$C/lib64/lib${s%.so.*}.so"
done
for X in "" -D__CUDA_API_VERSION_INTERNAL; do gcc -E -P $X -I"$T/include" "$T/include/cuda.h"; done \
  | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' (' | sort -u \
  | awk '{print "int " $1 "(void){return 100;}"}' > "$C/lib64/stubs/libcuda_stub.c"
gcc -shared -fPIC -w -Wl,-soname,libcuda.so.1 -o "$C/lib64/stubs/libcuda.so" "$C/lib64/stubs/libcuda_stub.c"
ln -sf libcuda.so "$C/lib64/stubs/libcuda.so.1"
# NVCC_APPEND_FLAGS: nvcc compresses every fatbin for size (CUDA >= 12.8; the driver inflates it
# when the module loads). candle's quantized/MoE kernels shrink from 37 to 9 MB, the stripped
# sslc from 65 to 37 MB. Cargo does not track the variable: a cache built without it keeps its
# large kernels until `cargo clean -p candle-kernels`.
echo "export CUDA_HOME=$C CUDA_PATH=$C PATH=$C/bin:\$PATH CUDA_COMPUTE_CAP=90 NVCC_APPEND_FLAGS=--compress-mode=size"
