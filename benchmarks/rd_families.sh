#!/usr/bin/env bash
# Rate-distortion curves of the plain seed families on real MNIST (train: first 8,000; evaluate: last 2,000).
# Each family is trained once and exported at several latent bit depths: one RD point per bundle.
#   bash benchmarks/rd_families.sh [MNIST_DIR] [OUT_DIR]     (about 5 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
MNIST=${1:-../shared/data/mnist}
OUT=${2:-runs/families}
EA=.venv/bin/edgeae
BITS=${BITS:-"2 3 4 6"}
mkdir -p "$OUT"
declare -A OPTS=(
  [dense]="--latent 32 --hidden 128"
  [conv]=""
  [vae]="--latent 16 --set beta=0.05"
  [sparse]="--latent 64 --hidden 128"
)
bundles=() labels=()
for fam in dense conv vae sparse; do
  $EA train --model "$fam" ${OPTS[$fam]} --dataset mnist --data "$MNIST" --epochs 10 --batch-size 32 \
    --out "$OUT/$fam" --force | tail -n 2
  for b in $BITS; do
    $EA export "$OUT/$fam" --out "$OUT/bundles/$fam-b$b" --latent-bits "$b" --no-speed --force > /dev/null
    bundles+=("$OUT/bundles/$fam-b$b"); labels+=(--label "$fam")
  done
done
$EA eval "${bundles[@]}" "${labels[@]}" --dataset mnist --data "$MNIST" --codecs jpeg,webp,png \
  --no-progress --report "$OUT/report" --json "$OUT/rd.json"
