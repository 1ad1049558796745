#!/usr/bin/env bash
# Rate-distortion of `codec` runs trained on the embedded photos (64x64 patches of 12 scikit-image photographs),
# evaluated on the held-out photographs (coffee, chelsea) cut into 256x256 tiles: the runs are exported at
# 256x256 (the codec is fully convolutional), one payload per tile, against JPEG / WebP / PNG on the same tiles.
#   TAG=-x1-cos LR_DECAY=cosine PHOTO_EPOCHS=16 PHOTO_EXTRA=1 PHOTO_LAMBDAS="0.0005 0.001 0.003" \
#     bash benchmarks/train_codecs.sh photos
#   bash benchmarks/rd_photos.sh "runs/codec/photos-rgb-x1-cos-l*" [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
EA=.venv/bin/edgeae
GLOB=${1:-runs/codec/photos-rgb-x1-cos-l*}
OUT=${2:-runs/rd-photos}
bundles=()
for run in $GLOB; do
  [[ -d $run ]] || continue
  b=runs/codec/bundles/photos256-$(basename "$run")
  [[ -f $b/manifest.json ]] || $EA export "$run" --out "$b" --input-size 256,256 --int8 --no-speed --force > /dev/null
  bundles+=("$b")
done
$EA eval "${bundles[@]}" --label codec --dataset photos --patch 256 --color rgb --codecs jpeg,webp,png \
  --qualities 1,2,3,5,7,10,15,20,30,50,75,90 --no-progress --report "$OUT/report" --json "$OUT/rd.json"
