#!/usr/bin/env bash
# Train the `codec` families used for the rate-distortion targets (issue 7), sequentially, one thread each
# (2 shared cores: torch's default of 2 threads oversubscribes and runs ~10x slower under load).
#
#   benchmarks/train_codecs.sh [mnist|photos|all]      # runs land in runs/codec/<name>, logs next to them
#   .venv/bin/python benchmarks/codec_rd.py runs/codec/mnist-l*            # real-payload RD vs JPEG/WebP
#   .venv/bin/python benchmarks/codec_rd.py runs/codec/photos-rgb-l*
#   .venv/bin/python benchmarks/codec_speed.py runs/codec/photos-rgb-l0.01  # 768x512 encoder fp32 vs int8
#
# Measured 2026-11-23 on this 2-core AMD EPYC host (shared); real payloads, headers included, baselines at their
# best settings (JPEG optimize=True, WebP method=6):
#   MNIST (the reported curve):  TAG=-x1-cos LR_DECAY=cosine MNIST_EPOCHS=30 MNIST_EXTRA=1 bash $0 mnist
#     lmbda 0.001 55.2 B 25.90 dB | 0.003 69.4 B 28.53 | 0.008 88.8 B 30.81 | 0.02 132.1 B 32.71
#     BD-rate vs WebP -47.6%, vs JPEG -77.5%  (bash benchmarks/rd_mnist_all.sh)
#     MNIST_EXTRA=2: -47.5% (overfits 8,000 images above lmbda 0.001); no extra layers, 25 epochs: -41% vs
#     Pillow-default WebP
#   Photos (the reported curve): TAG=-x1-cos LR_DECAY=cosine PHOTO_EPOCHS=16 PHOTO_EXTRA=1 \
#       PHOTO_LAMBDAS="0.0005 0.001 0.003" bash $0 photos
#     256x256 held-out tiles: 576 B 20.31 dB | 887 B 22.49 | 1609 B 23.38; BD vs JPEG -13.6% over 21.5-23.4 dB
#     only; WebP dominates (bash benchmarks/rd_photos.sh "runs/codec/photos-rgb-x1-cos-l*")
#   768x512 RGB encoder (benchmarks/codec_speed.py runs/codec/photos-rgb-l0.01), 1 thread: fp32 39.3 ms, int8
#     15.3 ms (2.57x), +0.01 dB with the encoder output on the latent grid
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=.venv/bin/edgeae
OUT=runs/codec
mkdir -p "$OUT"
what=${1:-all}
# Overrides (the report's numbers used the values it states): lambdas and epochs per dataset.
MNIST_LAMBDAS=${MNIST_LAMBDAS:-"0.001 0.003 0.008 0.02"}
MNIST_EPOCHS=${MNIST_EPOCHS:-25}
MNIST_WIDTH=${MNIST_WIDTH:-64}
MNIST_EXTRA=${MNIST_EXTRA:-0}  # codec extra_layers (stride-1 Conv3x3+ReLU after each inner stage)
PHOTO_LAMBDAS=${PHOTO_LAMBDAS:-"0.003 0.01 0.03"}
PHOTO_EPOCHS=${PHOTO_EPOCHS:-10}
PHOTO_EXTRA=${PHOTO_EXTRA:-0}
LR_DECAY=${LR_DECAY:-none}   # cosine: lr falls to 1% over the run
TAG=${TAG:-}                 # suffix of the run names, to keep several series side by side

train() {  # name, then edgeae train options
  local name=$1; shift
  echo "== $name: $*"
  "$PY" train --model codec "$@" --out "$OUT/$name" --force >"$OUT/$name.log" 2>&1
  tail -2 "$OUT/$name.log"
}

if [[ $what == mnist || $what == all ]]; then
  # MNIST: first 8,000 train, last 2,000 evaluate; stride 4 (28 -> 7x7 latent), 16 latent channels.
  for l in $MNIST_LAMBDAS; do
    train "mnist-w$MNIST_WIDTH$TAG-l$l" --dataset mnist --data ../shared/data/mnist --lmbda "$l" --channels "$MNIST_WIDTH" \
      --latent 16 --set extra_layers="$MNIST_EXTRA" --epochs "$MNIST_EPOCHS" --batch-size 32 --lr-decay "$LR_DECAY"
  done
fi

if [[ $what == photos || $what == all ]]; then
  # Photos: 64x64 RGB patches of the 12 training photographs; validation = coffee + chelsea patches.
  for l in $PHOTO_LAMBDAS; do
    train "photos-rgb$TAG-l$l" --dataset photos --color rgb --patch 64 --lmbda "$l" --channels 48 --latent 32 \
      --set downsamplings=3 --set extra_layers="$PHOTO_EXTRA" --epochs "$PHOTO_EPOCHS" --batch-size 16 \
      --lr-decay "$LR_DECAY"
  done
fi
