#!/usr/bin/env bash
# Train the `codec` families used for the rate-distortion targets (issue 7), sequentially, one thread each
# (2 shared cores: torch's default of 2 threads oversubscribes and runs ~10x slower under load).
#
#   benchmarks/train_codecs.sh [mnist|photos|all]      # runs land in runs/codec/<name>, logs next to them
#   .venv/bin/python benchmarks/codec_rd.py runs/codec/mnist-l*            # real-payload RD vs JPEG/WebP
#   .venv/bin/python benchmarks/codec_rd.py runs/codec/photos-rgb-l*
#   .venv/bin/python benchmarks/codec_speed.py runs/codec/photos-rgb-l0.01  # 768x512 encoder fp32 vs int8
#
# Measured 2026-11-23 on this 2-core AMD EPYC host (shared), `edgeae export RUN` + `edgeae eval` (real payloads,
# 23-24 byte header included, fp32), MNIST last 2,000 images:
#   width 64, 25 epochs (MNIST_WIDTH=64 MNIST_EPOCHS=25):   lmbda 0.001  55.2 B 25.40 dB | 0.003  73.6 B 28.10 dB
#                                                           lmbda 0.008 102.7 B 30.43 dB | 0.02  148.5 B 32.98 dB
#     BD-rate vs WebP -41.0% (25.6-33.0 dB), -46.9% without the 0.02 point; vs JPEG -82.5%
#   width 32, 30/15 epochs: 0.001 57.5 B 25.47 dB | 0.003 81.6 B 27.62 | 0.01 116.2 B 30.22 | 0.03 169.8 B 31.80
#     BD-rate vs WebP -34.5%, vs JPEG -80.7%
#   WebP q=1 121.0 B 25.57 dB, q=5 137.9 B 27.81 dB, q=20 167.4 B 31.39 dB
# Photos (PHOTO_EPOCHS=10, ~440 steps: undertrained), 82 held-out 64x64 RGB patches: 143.5 B 22.79 dB,
#   283.3 B 23.19 dB, 380.3 B 22.71 dB; BD vs JPEG -75.2% (JPEG q=1..5 only: its ~700 B of headers per patch),
#   WebP q=1 is 157.8 B at 28.16 dB (no overlap).
# 768x512 RGB encoder (photos-rgb-l0.01, benchmarks/codec_speed.py), 1 thread: fp32 75 ms; int8 all-conv 31 ms
#   (2.45x) but -0.41 dB; int8 with the last conv in fp32 (--fp32-last) 38 ms (1.91x), -0.0 dB.
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
