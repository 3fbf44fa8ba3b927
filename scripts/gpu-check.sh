#!/usr/bin/env bash
# The prepared check for a lent GPU machine (one H100/H200; python3 with torch; no cargo, no
# network). Build here with scripts/cuda-check.sh, copy target/cuda/sslc-stripped to
# .device/sslc and carry `.device` (docs/gpu.md). The machine is lent for minutes, once, and
# only what this leaves in $OUT comes back, so:
#   - the correctness checks come first, the timings last, with whatever time is left;
#   - every step's limit is capped by the time left, and the whole check ends within
#     GPU_CHECK_TOTAL_S (420 s) even if every step runs to its limit;
#   - every row is appended to $OUT/gpu-check.jsonl and flushed as its case ends, so a step
#     killed at its limit loses nothing it finished (bench/gpu_common.py);
#   - scratch (fake data, checkpoints, run folders, caches) goes to a temporary folder, and
#     $OUT receives at most 8 files: gpu-check.jsonl (every row), summary.md (the table,
#     rewritten after each step) and STEP.log, the truncated log of each failing step.
# The steps:
#   1. preflight  nvidia-smi (name, driver, compute mode, memory), `ldd` of the binary for
#                 missing libraries, library and Python versions;
#   2. kernel     `sslc eval objectives/simclr_gh.ssl --backend cuda` at f32 and bf16 against
#                 `--backend cpu`; with compute-sanitizer installed, that eval under memcheck;
#   3. parity     every other shipped objective at every precision, the same way;
#   4. nccl       with NCCL_DEBUG=WARN: simclr_gh on the digits end to end with --device cuda;
#                 one NCCL rank (--gpus 1) against that run; the objective in place on the GPU
#                 against --backend cpu (bench/gpu_nccl.py);
#   5. train      one training step on the GPU against the CPU, then a short run on fake
#                 CIFAR-100 on the GPU against the same run on the CPU (bench/torch_train.py);
#   6. bench      a warm-up, then sslc's loss kernels and training throughput against PyTorch
#                 eager (bench/torch_gpu.py, bench/torch_train.py), with the time left.
# Dry mode (GPU_CHECK_DRY=1 or --dry) runs every step's CPU half at tiny sizes: the fake data,
# every harness with --backend cpu/reference and --device cpu, the rows and the table, so CI
# proves the harness works (tests/gpu_check.rs). Without a GPU and not dry, it stops at once
# with a message. Exit status: 0 when every row is ok or skipped, 1 when any failed, 2 when
# there is nothing to check (no GPU, no binary).
# Environment: SSLC (the binary; default .device/sslc), OUT (default /tmp/gpu-check), PYTHON
# (default python3), GPU_CHECK_TOTAL_S, GPU_CHECK_KEEP=1 (keep the scratch folder).
set -uo pipefail
CALLER=$PWD
cd "$(dirname "$0")/.."
REPO=$PWD
DRY=${GPU_CHECK_DRY:-0}
[ "${1:-}" = --dry ] && DRY=1
SSLC=${SSLC:-$REPO/.device/sslc}
OUT=${OUT:-/tmp/gpu-check}
[[ $SSLC = /* ]] || SSLC=$CALLER/$SSLC   # relative to where the script was started
[[ $OUT = /* ]] || OUT=$CALLER/$OUT
PYTHON=${PYTHON:-python3}
TOTAL_S=${GPU_CHECK_TOTAL_S:-420}
RESERVE_S=15      # for the final table, after the last step
GRACE_S=5         # `timeout -k`: SIGKILL this long after SIGTERM
start=$SECONDS

mkdir -p "$OUT"
ROWS="$OUT/gpu-check.jsonl"
rm -f "$ROWS" "$OUT/summary.md" "$OUT"/{preflight,kernel,parity,nccl,train,bench}.log
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
mkdir -p "$SCRATCH/logs"
cleanup() { [ "${GPU_CHECK_KEEP:-0}" = 1 ] || rm -rf "$SCRATCH"; }
trap cleanup EXIT

json() {  # a JSON string: backslashes, quotes and control characters escaped
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    s=$(printf '%s' "$s" | tr '\n\t\r' '   ' | tr -d '\000-\037')
    printf '"%s"' "$s"
}
row() {  # step check case sslc reference result: one row, appended (the harnesses' format)
    printf '{"step": %s, "check": %s, "case": %s, "sslc": %s, "reference": %s, "result": %s, "dry": %s}\n' \
        "$(json "$1")" "$(json "$2")" "$(json "$3")" "$(json "$4")" "$(json "$5")" "$(json "$6")" \
        "$([ "$DRY" = 1 ] && echo true || echo false)" >> "$ROWS"
    echo "| $1 | $2 | $3 | $4 | $5 | $6 |"
}
summary() {  # the table of every row so far, to $OUT/summary.md
    { echo "# sslc gpu-check, $(date -u '+%Y-%m-%d %H:%M UTC')$([ "$DRY" = 1 ] && echo ', dry run (CPU only)')"
      echo
      "$PYTHON" "$REPO/bench/gpu_common.py" table "$ROWS" 2>&1 || cat "$ROWS"
    } > "$OUT/summary.md.tmp" && mv "$OUT/summary.md.tmp" "$OUT/summary.md"
}
keep_log() {  # the end of a failing step's log, to $OUT (at most 256 KB)
    local log="$SCRATCH/logs/$1.log"
    [ -s "$log" ] || return 0
    { [ "$(stat -c %s "$log")" -gt 262144 ] && echo "[... the first $(($(stat -c %s "$log") - 262144)) bytes are cut]"
      tail -c 262144 "$log"; } > "$OUT/$1.log"
}

# ---- 1. preflight ----------------------------------------------------------------------------
nothing_to_check() {
    echo "gpu-check: $1" >&2
    row preflight setup - - - "FAIL: $1"
    summary
    exit 2
}
[ -x "$SSLC" ] || nothing_to_check "the sslc binary $SSLC is missing: build it with scripts/cuda-check.sh and carry .device/ (docs/gpu.md)"
if [ "$DRY" != 1 ]; then
    gpu=$(timeout 10 nvidia-smi --query-gpu=name,driver_version,compute_mode,memory.total,memory.used \
        --format=csv,noheader 2>&1 | head -1)
    if [ $? -ne 0 ] || [ -z "$gpu" ] || ! command -v nvidia-smi >/dev/null; then
        nothing_to_check "no NVIDIA GPU here (nvidia-smi: ${gpu:-not found}); nothing was run. The CPU half of every step runs with GPU_CHECK_DRY=1 bash scripts/gpu-check.sh"
    fi
fi
command -v "$PYTHON" >/dev/null || nothing_to_check "$PYTHON is not installed; the harnesses need Python with numpy (and torch)"

# libcuda from the driver; libnvrtc, cudart, cublas, curand from PyTorch's nvidia wheels, and
# libnccl.so.2 from the nvidia-nccl wheel (nvidia/nccl/lib), which the `nccl` build links.
LIBS=$("$PYTHON" - <<'PY'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
wanted = ("libnvrtc.so*", "libcublas.so*", "libcurand.so*", "libcudart.so*", "libnccl.so*")
dirs = {os.path.dirname(p) for r in roots for w in wanted for p in glob.glob(os.path.join(r, "nvidia", "**", w), recursive=True)}
dirs |= {d for d in ("/usr/local/nvidia/lib64", "/usr/lib/x86_64-linux-gnu") if glob.glob(os.path.join(d, "libcuda.so*"))}
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# sslc's NVRTC cubins and the driver's JIT cache of candle's PTX: written, never carried, and
# large enough to hold every kernel (the driver's default cache is 256 MiB at ~/.nv).
export SSLC_CACHE_DIR="$SCRATCH/sslc-cache"
export CUDA_CACHE_PATH="$SCRATCH/cuda-cache" CUDA_CACHE_MAXSIZE=4294967296
export NCCL_DEBUG=WARN
export GPU_CHECK_ROWS="$ROWS" GPU_CHECK_DRY="$DRY"
export PYTHONPATH="$REPO/bench${PYTHONPATH:+:$PYTHONPATH}"

preflight_failed=0
if [ "$DRY" = 1 ]; then
    row preflight gpu - - - "skipped: dry run (no GPU used)"
else
    mode=$(cut -d, -f3 <<<"$gpu" | tr -d ' ')
    row preflight gpu "$gpu" - - "$([ "$mode" = Prohibited ] && echo 'FAIL: compute mode Prohibited' || echo ok)"
    [ "$mode" = Prohibited ] && preflight_failed=1
fi
{ echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; ldd "$SSLC"; } > "$SCRATCH/logs/preflight.log" 2>&1
missing=$(grep "not found" "$SCRATCH/logs/preflight.log" | awk '{print $1}' | tr '\n' ' ')
found=$(grep -oE "lib(cuda|cudart|cublas|curand|nvrtc|nccl)[^ ]*\.so[^ ]* => [^ ]+" "$SCRATCH/logs/preflight.log" \
    | awk '{print $1}' | tr '\n' ' ')
if [ -n "$missing" ]; then
    row preflight "ldd sslc" "missing: $missing" "${found:-none}" - "FAIL: the binary cannot start without them"
    preflight_failed=1
else
    row preflight "ldd sslc" "${found:-no CUDA libraries linked}" - - ok
fi
versions=$(timeout 20 "$PYTHON" - 2>&1 <<'PY' | tail -1
import platform
line = f"python {platform.python_version()}"
try:
    import numpy
    line += f", numpy {numpy.__version__}"
    import torch
    line += f", torch {torch.__version__} (CUDA {torch.version.cuda}"
    if torch.cuda.is_available():
        nccl = torch.cuda.nccl.version()
        line += ", NCCL " + (".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)) + ")"
    else:
        line += ", no GPU visible to torch)"
except ImportError as e:
    line += f", missing: {e.name}"
print(line)
PY
)
# Starting the binary also registers candle's compressed kernels (docs/gpu.md).
if ! sslc_version=$(timeout 10 "$SSLC" --version 2>&1); then
    row preflight versions "$(tail -1 <<<"$sslc_version")" "$versions" - "FAIL: sslc does not start"
    preflight_failed=1
elif ! grep -q ', torch ' <<<"$versions"; then
    row preflight versions "$sslc_version" "$versions" - "FAIL: the harnesses need Python with numpy and torch"
    preflight_failed=1
else
    row preflight versions "$sslc_version" "$versions" - ok
fi
[ "$preflight_failed" = 1 ] && keep_log preflight
summary

# ---- 2-6. the steps ----------------------------------------------------------------------------
failed=0
child=
# The step runs in the background and is waited for, so a TERM to this script is handled at
# once (bash defers traps while a foreground command runs): the running step is stopped, which
# writes the row of the case it interrupts, and the table is written.
terminated() {
    [ -n "$child" ] && kill -TERM "$child" 2>/dev/null && wait "$child"
    row script - - - - "FAIL: gpu-check.sh was terminated after $((SECONDS - start)) s"
    summary
    exit 143
}
trap terminated TERM INT
step() {  # name cap script phase [script phase ...]: the harnesses, in order, under min(cap, time left)
    local name=$1 cap=$2
    shift 2
    local left=$((TOTAL_S - RESERVE_S - GRACE_S - (SECONDS - start)))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 10 ]; then
        row "$name" step - - - "skipped: the check's $TOTAL_S s are spent"
        return
    fi
    echo "== $name: up to $limit s" >&2
    local began=$SECONDS code=0
    local deadline=$(($(date +%s) + limit - 3))
    while [ $# -ge 2 ]; do
        local remaining=$((limit - (SECONDS - began)))
        if [ "$remaining" -lt 5 ]; then
            row "$name" "$1 $2" - - - "skipped: the step's $limit s are spent"
            shift 2
            continue
        fi
        GPU_CHECK_STEP=$name GPU_CHECK_DEADLINE=$deadline \
            timeout -k "$GRACE_S" "$remaining" "$PYTHON" "$REPO/bench/$1" "$2" "$SSLC" "$REPO" "$SCRATCH/work" \
            >> "$SCRATCH/logs/$name.log" 2>&1 &
        child=$!
        wait "$child"
        local status=$?
        child=
        case $status in
            0) ;;
            1) ;;  # a failed case, which has its row
            124 | 137) row "$name" "$1 $2" - - - "FAIL: stopped at the step's $limit s limit; the rows above are what it finished" ;;
            *) row "$name" "$1 $2" - - - "FAIL: exited with $status (see $name.log)" ;;
        esac
        [ "$code" = 0 ] && code=$status
        shift 2
    done
    echo "== $name: exit $code after $((SECONDS - began)) s" >&2
    if [ "$code" != 0 ]; then
        failed=1
        keep_log "$name"
    fi
    summary
}
# Worst case, every step at its limit: preflight 40 s (its own timeouts), then 60 + 50 + 100 +
# 100 s and 5 s of grace each, which leaves bench 30 s of the 420 before the table's 15.
step kernel 60 torch_gpu.py kernel
step parity 50 torch_gpu.py parity
step nccl 100 gpu_nccl.py nccl
step train 100 torch_train.py train
# Timings last, with what is left; earlier steps have loaded every kernel once (warm-up).
step bench 600 torch_gpu.py bench torch_train.py throughput

summary
cat "$OUT/summary.md"
echo "results: $OUT ($(ls "$OUT" | wc -l) files), $((SECONDS - start)) s"
grep -q '"result": "FAIL' "$ROWS" && exit 1
exit "$failed"
