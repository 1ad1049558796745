#!/usr/bin/env bash
# One MNIST rate-distortion report for every family: the plain seed families (dense, conv, vae, sparse at
# 2/3/4/6 latent bits, from rd_families.sh) and the learned codec (one bundle per lambda, from
# train_codecs.sh), against JPEG / WebP / PNG on the last 2,000 shared-MNIST test images.
#   bash benchmarks/rd_families.sh                                       # once: trains + exports the families
#   TAG=-x1-cos LR_DECAY=cosine MNIST_EPOCHS=30 MNIST_EXTRA=1 bash benchmarks/train_codecs.sh mnist
#   bash benchmarks/rd_mnist_all.sh [CODEC_RUN_GLOB] [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
EA=.venv/bin/edgeae
GLOB=${1:-runs/codec/mnist-w64-x1-cos-l*}
OUT=${2:-runs/rd-mnist}
bundles=() labels=()
for fam in dense conv vae sparse; do
  for b in runs/families/bundles/$fam-b*; do bundles+=("$b"); labels+=(--label "$fam"); done
done
for run in $GLOB; do
  [[ -d $run ]] || continue
  b=runs/codec/bundles/$(basename "$run")
  [[ -f $b/manifest.json ]] || $EA export "$run" --out "$b" --int8 --no-speed --force > /dev/null
  bundles+=("$b"); labels+=(--label codec)
done
$EA eval "${bundles[@]}" "${labels[@]}" --dataset mnist --data ../shared/data/mnist --codecs jpeg,webp,png \
  --no-progress --report "$OUT/report" --json "$OUT/rd.json"
