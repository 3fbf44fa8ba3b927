#!/usr/bin/env bash
# The CPU back end against PyTorch eager: speed at N=512, D=128 (K=100 anchors, 300 Sinkhorn
# iterations) and peak working memory at larger N, on the same number of threads. Makes a
# throwaway virtual environment with PyTorch from PyPI in bench/.venv, builds sslc in release
# mode, writes every measurement to bench/results.jsonl (or $OUT) and prints the tables of
# RESULTS.md. On a shared machine, speed is measured in ROUNDS rounds that alternate sslc and
# PyTorch, and the report takes the median of each configuration's round medians.
#
# `bench/run.sh train` measures training steps instead: `sslc bench-train` against the same
# step in PyTorch eager (bench/torch_reference.py train: same network and projector, two
# views, SGD with momentum and weight decay), ResNet-18 (CIFAR stem) at batch 64 on 32x32x3,
# the small conv net at batch 256 on 28x28x1 and ResNet-50 (ImageNet stem) at batch 32 on
# 64x64x3, alternating in rounds as above.
#
#   bench/run.sh                      # 2 threads, 3 rounds
#   THREADS=1 OUT=bench/results-1.jsonl bench/run.sh
#   PYTHON=/usr/bin/python3 bench/run.sh train     # a PyTorch already installed
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
rounds=${ROUNDS:-3}
venv=bench/.venv
python=${PYTHON:-$venv/bin/python}
if ! "$python" -c 'import torch' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch numpy
fi
# SSLC=path/to/sslc measures that binary instead of building one.
[ -n "${SSLC:-}" ] || cargo build --release --quiet
# OpenMP threads that spin while waiting (PyTorch's default) slow PyTorch down several times
# over on a machine whose cores are shared; passive waiting is its best case there.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
sslc=${SSLC:-target/release/sslc}
out=${OUT:-bench/results.jsonl}
: > "$out"

if [ "${1:-}" = train ]; then
    steps=${STEPS:-3}
    # SHAPES="resnet18 64 32 3;small 256 28 1" measures those alone (backbone batch size channels).
    shapes=("resnet18 64 32 3" "small 256 28 1" "resnet50 32 64 3")
    [ -z "${SHAPES:-}" ] || IFS=';' read -ra shapes <<< "$SHAPES"
    "$python" bench/torch_reference.py sgemm --threads "$threads" >> "$out"
    for round in $(seq "$rounds"); do
        for shape in "${shapes[@]}"; do
            read -r backbone batch size channels <<< "$shape"
            "$sslc" bench-train --backbone "$backbone" --batch-size "$batch" --image-size "$size" \
                --channels "$channels" --steps "$steps" --threads "$threads" >> "$out"
            "$python" bench/torch_reference.py train --backbone "$backbone" --batch "$batch" \
                --image-size "$size" --channels "$channels" --iters "$steps" --threads "$threads" >> "$out"
        done
    done
    "$python" bench/report.py "$out"
    exit
fi

"$python" bench/torch_reference.py sgemm --threads "$threads" >> "$out"
for round in $(seq "$rounds"); do
    for objective in simclr simclr_gh; do
        "$sslc" bench "objectives/$objective.ssl" --backend cpu --batch 512 --dim 128 --iters 20 --threads "$threads" >> "$out"
        "$python" bench/torch_reference.py "$objective" --batch 512 --dim 128 --iters 20 --threads "$threads" >> "$out"
        if [ "$round" = 1 ]; then
            "$sslc" bench "objectives/$objective.ssl" --backend reference --batch 512 --dim 128 --iters 5 --threads "$threads" >> "$out"
        fi
    done
done
# Memory: one evaluation each. PyTorch stops at N=8192: its N² matrices at N=16384
# (2N = 32768 rows, 4 GiB each) would not fit in this machine's memory.
for n in 4096 8192 16384; do
    "$sslc" bench objectives/simclr.ssl --backend cpu --batch "$n" --dim 128 --iters 1 --threads "$threads" >> "$out"
done
for n in 4096 8192; do
    "$python" bench/torch_reference.py simclr --batch "$n" --dim 128 --iters 1 --threads "$threads" >> "$out"
done
"$python" bench/report.py "$out"
