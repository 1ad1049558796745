#!/usr/bin/env bash
# The shipped photo codec (edgeae/zoo/photo-q*), end to end: train (resumable), bake + export + measure on whole
# photos/val images vs JPEG/WebP, speed/memory, model card. Every figure in docs/MODELS.md comes from here.
#
#   bash benchmarks/zoo_photo.sh train     # background-safe: resumes RUN if it exists (1 thread by default)
#   bash benchmarks/zoo_photo.sh build     # bake the current weights (checkpoint if unfinished) into the zoo
#   bash benchmarks/zoo_photo.sh bench     # 768x512 speed vs WebP/JPEG, 1920x1080 peak RSS, then the card
#
# Variables: FAMILY (hyperprior-vr | codec-vr), RUN, INIT (a base-family run to warm-start from), STEPS,
# LAMBDAS, THREADS, DEVICE (cpu | cuda), SHARED (the shared data folder).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
EA=${EA:-.venv/bin/edgeae}
FAMILY=${FAMILY:-hyperprior-vr}
RUN=${RUN:-runs/zoo-photo-${FAMILY%-vr}}
INIT=${INIT:-}
STEPS=${STEPS:-900}
LAMBDAS=${LAMBDAS:-"[0.003,0.007,0.016,0.036]"}
THREADS=${THREADS:-1}
DEVICE=${DEVICE:-cpu}
SHARED=${SHARED:-../shared/data}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

case ${1:-} in
  train)
    if [[ -f $RUN/config.json ]]; then
      exec "$EA" train --resume "$RUN" --threads "$THREADS" --device "$DEVICE" \
        --data "$SHARED/photos/train" --val-data "$SHARED/photos/val"
    fi
    exec "$EA" train --model "$FAMILY" --dataset images --data "$SHARED/photos/train" \
      --val-data "$SHARED/photos/val" --crop 128 --crops-per-image 4 --val-crop 192 --color rgb \
      --channels 64 --latent 128 --set downsamplings=4 --set "lmbdas=$LAMBDAS" --batch-size 8 --lr 5e-4 --lr-decay cosine \
      --epochs 1000 --max-steps "$STEPS" --threads "$THREADS" --device "$DEVICE" --checkpoint-minutes 5 \
      ${INIT:+--init "$INIT"} --out "$RUN"
    ;;
  build)
    ckpt=(); [[ -f $RUN/weights.safetensors ]] || ckpt=(--checkpoint)
    "$PY" -m edgeae.zoo.build "$RUN" --name photo --val "$SHARED/photos/val" --clean "${ckpt[@]}" \
      --description "photo codec, 4 qualities (${FAMILY%-vr})" --plot docs/zoo-photo-rd.png
    ;;
  bench)
    mkdir -p bench-out
    "$PY" benchmarks/bench_zoo.py photo:2 --json bench-out/zoo-photo-speed.json
    "$PY" -m edgeae.zoo.card docs/MODELS.md --speed photo=bench-out/zoo-photo-speed.json > /dev/null
    "$EA" models --pretrained
    ;;
  *) echo "usage: $0 train|build|bench" >&2; exit 2 ;;
esac
