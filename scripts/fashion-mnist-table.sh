#!/usr/bin/env bash
# The README's Fashion-MNIST-LT table: SimCLR and SimCLR+GH, three seeds each, on Debian's
# dataset-fashion-mnist, then `sslc compare` prints the Many/Medium/Few table as mean ± std
# over seeds. Six runs must fit in an hour of a 2-core machine, so by default each trains 3
# epochs on a 6,000-image thinning of every set (`--limit`); EXTRA="" gives the full preset.
# Rerunning continues an interrupted sweep: finished runs are kept, an unfinished one resumes.
#   bash scripts/fashion-mnist-table.sh            # runs/fashion-mnist-table/
#   SEEDS="0 1 2 3 4" EXTRA="--epochs 15" bash scripts/fashion-mnist-table.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SSLC=${SSLC:-./target/release/sslc}
OUT=${OUT:-runs/fashion-mnist-table}
SEEDS=${SEEDS:-0 1 2}
EXTRA=${EXTRA---epochs 3 --limit 6000}
[ -x "$SSLC" ] || cargo build --release

for seed in $SEEDS; do
    for objective in simclr simclr_gh; do
        dir="$OUT/$objective-seed$seed"
        [ -e "$dir/summary.json" ] && continue
        if [ -e "$dir/checkpoint.safetensors" ]; then where=(--resume "$dir"); else where=(--out "$dir"); fi
        echo "== $objective, seed $seed -> $dir" >&2
        # shellcheck disable=SC2086
        "$SSLC" run "objectives/$objective.ssl" --dataset fashion-mnist-lt --seed "$seed" $EXTRA "${where[@]}"
    done
done
"$SSLC" compare "$OUT"/*
