#!/usr/bin/env bash
# The README's zoo table: every shipped objective, one seed, on Debian's dataset-fashion-mnist,
# then `sslc compare` prints Many/Medium/Few linear-probe top-1 (%). Short by default so the
# runs fit in well under an hour of a 2-core machine: 2 epochs on a 3,000-image
# thinning of every set. EXTRA="" gives the full preset. Rerunning keeps finished runs.
#   bash scripts/zoo-table.sh                          # runs/zoo-table/
#   SEED=1 EXTRA="--epochs 5" bash scripts/zoo-table.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SSLC=${SSLC:-./target/release/sslc}
OUT=${OUT:-runs/zoo-table}
SEED=${SEED:-0}
EXTRA=${EXTRA---epochs 2 --limit 3000}
[ -x "$SSLC" ] || cargo build --release

for file in objectives/*.ssl; do
    objective=$(basename "$file" .ssl)
    dir="$OUT/$objective-seed$SEED"
    [ -e "$dir/summary.json" ] && continue
    rm -rf "$dir"
    echo "== $objective, seed $SEED -> $dir" >&2
    # shellcheck disable=SC2086
    "$SSLC" run "$file" --dataset fashion-mnist-lt --seed "$SEED" $EXTRA --out "$dir" >/dev/null
done
"$SSLC" compare "$OUT"/*
echo
echo "| objective | lines |"
echo "|---|---|"
for file in objectives/*.ssl; do echo "| $(basename "$file" .ssl) | $(grep -cvE '^\s*(//.*)?$' "$file") |"; done
