#!/usr/bin/env bash
# The CPU back end against PyTorch eager: speed at N=512, D=128 (K=100 anchors, 300 Sinkhorn
# iterations) and peak working memory at larger N, on the same number of threads. Makes a
# throwaway virtual environment with PyTorch from PyPI in bench/.venv, builds sslc in release
# mode, writes every measurement to bench/results.jsonl and prints the table of RESULTS.md.
#
#   bench/run.sh            # 2 threads
#   THREADS=4 bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
venv=bench/.venv
python=$venv/bin/python
if ! "$python" -c 'import torch' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet torch numpy
fi
cargo build --release --quiet
# OpenMP threads that spin while waiting (PyTorch's default) slow PyTorch down several times
# over on a machine whose cores are shared; passive waiting is its best case there.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
sslc=target/release/sslc
out=bench/results.jsonl
: > "$out"

"$python" bench/torch_reference.py sgemm --threads "$threads" >> "$out"
for objective in simclr simclr_gh; do
    for backend in cpu reference; do
        "$sslc" bench "objectives/$objective.ssl" --backend "$backend" --batch 512 --dim 128 --iters 20 --threads "$threads" >> "$out"
    done
    "$python" bench/torch_reference.py "$objective" --batch 512 --dim 128 --iters 20 --threads "$threads" >> "$out"
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
