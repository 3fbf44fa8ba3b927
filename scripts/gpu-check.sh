#!/usr/bin/env bash
# The prepared check for a lent GPU machine (one H200; python3 with torch; no cargo, no
# network). Build here with `cargo build --release`, copy target/release/sslc to .device/ and
# carry `.device` (docs/gpu.md). Then, in under 8 minutes, bench/torch_gpu.py
#   1. runs every shipped objective on the CUDA back end at every precision and compares it
#      with the reference evaluator in the same process (`sslc eval --backend cuda`),
#   2. times forward + backward of the CUDA kernels against PyTorch eager on the same GPU
#      (the reference formulation: exp of the full similarity matrix, boolean mask select,
#      row sum, log; Sinkhorn as 300 iterations of two mat-vecs),
# and prints one table. Logs go to $OUT (default /tmp/gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SSLC=${SSLC:-$REPO/.device/sslc}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
[ -x "$SSLC" ] || { echo "error: $SSLC is missing: build sslc here and carry it (docs/gpu.md)" >&2; exit 1; }

# libcuda from the driver, libnvrtc from PyTorch's nvidia wheels (.so.12 or .so.13).
LIBS=$(python3 - <<'EOF'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = {os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "libnvrtc.so*"), recursive=True)}
dirs |= {d for d in ("/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu") if glob.glob(os.path.join(d, "libcuda.so*"))}
print(":".join(sorted(dirs)))
EOF
)
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export SSLC_CACHE_DIR="$OUT/cache"
echo "libraries: $LD_LIBRARY_PATH" > "$OUT/setup.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >> "$OUT/setup.log" 2>&1

timeout 450 python3 bench/torch_gpu.py "$SSLC" "$REPO" "$OUT"
status=$?
echo "logs: $OUT"
exit $status
