#!/usr/bin/env bash
# Train the `codec` families used for the rate-distortion targets (issue 7), sequentially, one thread each
# (2 shared cores: torch's default of 2 threads oversubscribes and runs ~10x slower under load).
#
#   benchmarks/train_codecs.sh [mnist|photos|all]      # runs land in runs/codec/<name>, logs next to them
#   .venv/bin/python benchmarks/codec_rd.py runs/codec/mnist-l*            # real-payload RD vs JPEG/WebP
#   .venv/bin/python benchmarks/codec_rd.py runs/codec/photos-rgb-l*
#   .venv/bin/python benchmarks/codec_speed.py runs/codec/photos-rgb-l0.01  # 768x512 encoder fp32 vs int8
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=.venv/bin/edgeae
OUT=runs/codec
mkdir -p "$OUT"
what=${1:-all}
# Overrides (the report's numbers used the values it states): lambdas and epochs per dataset.
MNIST_LAMBDAS=${MNIST_LAMBDAS:-"0.001 0.003 0.01 0.03"}
MNIST_EPOCHS=${MNIST_EPOCHS:-30}
MNIST_WIDTH=${MNIST_WIDTH:-32}
PHOTO_LAMBDAS=${PHOTO_LAMBDAS:-"0.003 0.01 0.03"}
PHOTO_EPOCHS=${PHOTO_EPOCHS:-25}

train() {  # name, then edgeae train options
  local name=$1; shift
  echo "== $name: $*"
  "$PY" train --model codec "$@" --out "$OUT/$name" --force >"$OUT/$name.log" 2>&1
  tail -2 "$OUT/$name.log"
}

if [[ $what == mnist || $what == all ]]; then
  # MNIST: first 8,000 train, last 2,000 evaluate; stride 4 (28 -> 7x7 latent), 16 latent channels.
  for l in $MNIST_LAMBDAS; do
    train "mnist-w$MNIST_WIDTH-l$l" --dataset mnist --data ../shared/data/mnist --lmbda "$l" --channels "$MNIST_WIDTH" --latent 16 \
      --epochs "$MNIST_EPOCHS" --batch-size 32
  done
fi

if [[ $what == photos || $what == all ]]; then
  # Photos: 64x64 RGB patches of the 12 training photographs; validation = coffee + chelsea patches.
  for l in $PHOTO_LAMBDAS; do
    train "photos-rgb-l$l" --dataset photos --color rgb --patch 64 --lmbda "$l" --channels 48 --latent 32 \
      --set downsamplings=3 --epochs "$PHOTO_EPOCHS" --batch-size 16
  done
fi
