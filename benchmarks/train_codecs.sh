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

train() {  # name, then edgeae train options
  local name=$1; shift
  echo "== $name: $*"
  "$PY" train --model codec "$@" --out "$OUT/$name" --force >"$OUT/$name.log" 2>&1
  tail -2 "$OUT/$name.log"
}

if [[ $what == mnist || $what == all ]]; then
  # MNIST: first 8,000 train, last 2,000 evaluate; stride 4 (28 -> 7x7 latent), width 32, 16 latent channels.
  for l in 0.001 0.003 0.01 0.03; do
    train "mnist-l$l" --dataset mnist --data ../shared/data/mnist --lmbda "$l" --channels 32 --latent 16 \
      --epochs 30 --batch-size 32
  done
fi

if [[ $what == photos || $what == all ]]; then
  # Photos: 64x64 RGB patches of the 12 training photographs; validation = coffee + chelsea patches.
  for l in 0.003 0.01 0.03; do
    train "photos-rgb-l$l" --dataset photos --color rgb --patch 64 --lmbda "$l" --channels 64 --latent 48 \
      --set downsamplings=3 --epochs 60 --batch-size 16
  done
fi
