#!/usr/bin/env bash
# The prepared check for a lent GPU machine (one H200; python3 with torch; no cargo, no
# network). Build here with `cargo build --release --features cuda,nccl` (scripts/cuda-check.sh
# builds and strips it), copy the binary to .device/ and carry `.device` (docs/gpu.md). Then, in
# under 8 minutes even if every step runs to its timeout (210 + 140 + 125 s):
#   a-c. bench/torch_train.py: one training step on the GPU against the CPU (small conv and
#        ResNet-18, f32), `sslc run objectives/simclr_gh.ssl --device cuda` on the digits end to
#        end, and ResNet-18 training throughput at batch 512 next to PyTorch eager;
#   d.   bench/torch_gpu.py: every shipped objective on the CUDA back end at every precision
#        against the reference evaluator, and the loss benchmarks against PyTorch eager;
#   e-f. bench/gpu_nccl.py: one NCCL rank (`sslc run --gpus 1 --device cuda`, the machine has
#        one GPU) against the plain `--device cuda` run, per-step losses within 1e-4; and that
#        run, whose objective runs in place on the GPU, against `--backend cpu` (the objective
#        on host copies), per-step losses within 1e-3.
# Each step catches its own failure and the next one runs. Prints one table and writes it as
# $OUT/gpu-check.json; logs go to $OUT (default /tmp/gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SSLC=${SSLC:-$REPO/.device/sslc}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
[ -x "$SSLC" ] || { echo "error: $SSLC is missing: build sslc here and carry it (docs/gpu.md)" >&2; exit 1; }

# libcuda from the driver; libnvrtc, cudart, cublas, curand from PyTorch's nvidia wheels
# (cu13 for the `--features cuda` build; .so.12 NVRTC also serves the CUDA back end), and
# libnccl.so.2 from the nvidia-nccl wheel (nvidia/nccl/lib, cu12 and cu13 alike), which the
# `nccl` build links.
LIBS=$(python3 - <<'PY'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
wanted = ("libnvrtc.so*", "libcublas.so*", "libcurand.so*", "libcudart.so*", "libnccl.so*")
dirs = {os.path.dirname(p) for r in roots for w in wanted for p in glob.glob(os.path.join(r, "nvidia", "**", w), recursive=True)}
dirs |= {d for d in ("/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu") if glob.glob(os.path.join(d, "libcuda.so*"))}
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export SSLC_CACHE_DIR="$OUT/cache"
{ echo "libraries: $LD_LIBRARY_PATH"; ldd "$SSLC" | grep -E "cuda|cublas|curand|nvrtc|nccl|not found"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } > "$OUT/setup.log" 2>&1
rm -f "$OUT/train-rows.json" "$OUT/loss-rows.json" "$OUT/nccl-rows.json"

SSLC_TRAIN_BUDGET_S=170 timeout 210 python3 bench/torch_train.py "$SSLC" "$REPO" "$OUT" > "$OUT/train.log" 2>&1
echo "training checks: exit $? (log $OUT/train.log)" >&2
SSLC_LOSS_BUDGET_S=90 timeout 140 python3 bench/torch_gpu.py "$SSLC" "$REPO" "$OUT" > "$OUT/loss.log" 2>&1
echo "loss checks: exit $? (log $OUT/loss.log)" >&2
timeout 125 python3 bench/gpu_nccl.py "$SSLC" "$REPO" "$OUT" > "$OUT/nccl.log" 2>&1
echo "run comparisons: exit $? (log $OUT/nccl.log)" >&2

python3 - "$OUT" <<'PY'
import json, os, sys, time
out = sys.argv[1]
rows = []
for name, what in [("train-rows.json", "a-c. training checks"), ("loss-rows.json", "d. loss checks"),
                   ("nccl-rows.json", "e-f. run comparisons")]:
    try:
        rows += json.load(open(os.path.join(out, name)))
    except Exception as e:
        rows.append({"check": what, "case": "-", "sslc": "-", "torch": "-", "result": f"FAIL: no results ({e.__class__.__name__}; see the log)"})
setup = open(os.path.join(out, "setup.log")).read().strip().splitlines()
print(f"\nsslc gpu-check, {time.strftime('%Y-%m-%d')}: {setup[-1] if setup else ''}\n")
print("| check | case | sslc | torch / reference | result |")
print("|---|---|---|---|---|")
for r in rows:
    print(f"| {r['check']} | {r['case']} | {r['sslc']} | {r['torch']} | {r['result']} |")
json.dump({"date": time.strftime("%Y-%m-%d"), "setup": setup, "rows": rows}, open(os.path.join(out, "gpu-check.json"), "w"), indent=1)
failed = [r for r in rows if str(r["result"]).startswith("FAIL")]
sys.exit(1 if failed else 0)
PY
status=$?
echo "logs: $OUT"
exit $status
