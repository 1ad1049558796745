#!/usr/bin/env bash
# The shipped photo codec (edgeae/zoo/photo/, or photo-q* baked), end to end: train (resumable), export + measure on whole
# photos/val images vs JPEG/WebP, speed/memory, model card. Every figure in docs/MODELS.md comes from here.
#
#   bash benchmarks/zoo_photo.sh train     # background-safe: resumes RUN if it exists (1 thread by default)
#   bash benchmarks/zoo_photo.sh build     # bake the current weights (checkpoint if unfinished) into the zoo
#   FAMILY=hyperprior RUNS="runs/pairs/h_0.0035 runs/pairs/h_0.007 ..." bash benchmarks/zoo_photo.sh build
#                                          # or ship finished plain runs, one per quality
#   bash benchmarks/zoo_photo.sh bench     # 768x512 speed vs WebP/JPEG, 1920x1080 peak RSS, then the card
#
#   bash benchmarks/zoo_photo.sh pack      # photos/train + val as q92 JPEG (4:4:4) in gpu-data/ (git-ignored, 24.4 MiB):
#                                          # small enough for the device tool's 64 MiB carry
#
# Variables: FAMILY (hyperprior-vr: ships as ONE multi-quality bundle, edgeae/zoo/photo/ | codec-vr: baked per
# quality), CHANNELS, LATENT, RUN, INIT (a base-family run to warm-start from), STEPS, BENCH_QUALITY (bench),
# LAMBDAS, THREADS, DEVICE (cpu | cuda), PRECISION (bf16 | fp32; bf16 trains ~2.8x faster per step on an AMX
# CPU at equal quality per step, docs/MODELS.md), SHARED (the shared data folder), CROP, BATCH, LR, SET (more options,
# e.g. "--set means=true --set hyper_signed=true"), MINUTES (stop with a checkpoint after this long).
#
# On a lent GPU (the device tool: no network, torch/onnx/onnxruntime/pillow/scipy installed, 10 min a call),
# after `pack` here, one call with carry ["gpu-data"] and timeout_s 600 (the run comes back under $OUT):
#   PY=python3 EA="python3 -m edgeae" SHARED=gpu-data DEVICE=cuda THREADS=8 CROP=256 BATCH=16 LR=2e-4 \
#     STEPS=40000 MINUTES=8 SET="--set qat=false" RUN=$OUT/run bash benchmarks/zoo_photo.sh train
# (scale-only, float h_s in training, the integer hyper-decoder integerised at export: docs/HYPERPRIOR.md has
# why; mean-scale with 1/8-step means measured worse at 7,000 CPU steps: -0.4% vs -6.9% BD-rate)
# then, here: RUN=<the fetched run> bash benchmarks/zoo_photo.sh build (resume it later with `train` again).
# At Balle et al.'s sizes (the zoo's next model: ONE multi-quality bundle of ~23 MB, docs/MODELS.md "Thirteenth
# session"), warm-started from checkpoints/balle-s12's hyperprior (in git history since session 14, whose GPU run
# benchmarks/gpu_zoo.sh made and checkpoints/bvr-s14 holds); its run is too big to come back as it is
# (16 MiB a file), so it travels through benchmarks/runpack.py (slim, float16):
#   python3 benchmarks/runpack.py unpack checkpoints/balle-s12 /tmp/balle && PY=python3 EA="python3 -m edgeae" \
#     SHARED=gpu-data DEVICE=cuda THREADS=8 CROP=256 BATCH=16 LR=1e-4 STEPS=40000 MINUTES=8 CHANNELS=128 \
#     LATENT=192 SET="--set qat=false --set hyper_channels=128 --set hyper_latent_channels=128" \
#     LAMBDAS="[0.0035,0.007,0.013,0.026,0.05]" INIT=/tmp/balle/h_0.013 RUN=/tmp/bvr \
#     bash benchmarks/zoo_photo.sh train; python3 benchmarks/runpack.py pack $OUT/pack --half /tmp/bvr
# then here: python benchmarks/runpack.py unpack FILES_AT/pack runs && RUN=runs/bvr bash benchmarks/zoo_photo.sh build
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
read -ra EA <<< "${EA:-.venv/bin/edgeae}"
FAMILY=${FAMILY:-hyperprior-vr}
CHANNELS=${CHANNELS:-64}  # N (new runs); Balle et al.'s sizes: CHANNELS=128 LATENT=192 and
LATENT=${LATENT:-128}     # M; SET="--set qat=false --set hyper_channels=128 --set hyper_latent_channels=128"
RUN=${RUN:-runs/zoo-photo-${FAMILY%-vr}}
RUNS=${RUNS:-}
INIT=${INIT:-}
STEPS=${STEPS:-900}
LAMBDAS=${LAMBDAS:-"[0.003,0.007,0.016,0.036]"}
THREADS=${THREADS:-1}
DEVICE=${DEVICE:-cpu}
# bf16 where it is native (a GPU, or a CPU with AMX / AVX512-BF16: ~2.8x faster steps); elsewhere fp32, since
# an emulated bf16 step took 13x as long as fp32 on an AMD EPYC (AVX2) host (docs/MODELS.md, session 14)
if [[ ${DEVICE:-cpu} != cpu ]] || grep -qE 'amx_bf16|avx512_bf16' /proc/cpuinfo 2>/dev/null; then
  PRECISION=${PRECISION:-bf16}
else
  PRECISION=${PRECISION:-fp32}
fi
SHARED=${SHARED:-../shared/data}
CROP=${CROP:-128}
BATCH=${BATCH:-8}
LR=${LR:-5e-4}
read -ra SET <<< "${SET:-}"
MINUTES=${MINUTES:-0}
STOP=(); [[ $MINUTES != 0 ]] && STOP=(timeout -s TERM "${MINUTES}m")  # SIGTERM: the trainer checkpoints
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

case ${1:-} in
  train)
    if [[ -f $RUN/config.json ]]; then
      exec "${STOP[@]}" "${EA[@]}" train --resume "$RUN" --threads "$THREADS" --device "$DEVICE" \
        --data "$SHARED/photos/train" --val-data "$SHARED/photos/val"
    fi
    exec "${STOP[@]}" "${EA[@]}" train --model "$FAMILY" --dataset images --data "$SHARED/photos/train" \
      --val-data "$SHARED/photos/val" --crop "$CROP" --crops-per-image 4 --val-crop 192 --color rgb \
      --channels "$CHANNELS" --latent "$LATENT" --set downsamplings=4 --set "lmbdas=$LAMBDAS" "${SET[@]}" --batch-size "$BATCH" \
      --lr "$LR" --lr-decay cosine --epochs 100000 --max-steps "$STEPS" --threads "$THREADS" --device "$DEVICE" \
      --precision "$PRECISION" --checkpoint-minutes 2 ${INIT:+--init "$INIT"} --out "$RUN"
    ;;
  pack)
    "$PY" - "$SHARED" gpu-data <<'PYEOF'
import sys
from pathlib import Path
from PIL import Image
src, dst = Path(sys.argv[1]) / "photos", Path(sys.argv[2]) / "photos"
for split in ("train", "val"):
    out = dst / split
    out.mkdir(parents=True, exist_ok=True)
    for p in sorted((src / split).iterdir()):
        if p.suffix.lower() in (".png", ".jpg", ".jpeg"):
            Image.open(p).convert("RGB").save(out / (p.stem + ".jpg"), quality=92, subsampling=0)
print(sum(f.stat().st_size for f in dst.rglob("*.jpg")) // 2**20, "MiB in", dst)
PYEOF
    ;;
  build)
    if [[ -n $RUNS ]]; then  # one finished plain run per quality (e.g. benchmarks/gpu_pairs.sh's hyperprior runs)
      read -ra runs <<< "$RUNS"
      "$PY" -m edgeae.zoo.build "${runs[@]}" --name photo --val "$SHARED/photos/val" --clean \
        --description "photo codec, ${#runs[@]} qualities ($FAMILY)" --plot docs/zoo-photo-rd.png
      exit
    fi
    ckpt=(); [[ -f $RUN/weights.safetensors ]] || ckpt=(--checkpoint)
    "$PY" -m edgeae.zoo.build "$RUN" --name photo --val "$SHARED/photos/val" --clean "${ckpt[@]}" \
      --description "photo codec, variable rate (${FAMILY%-vr})" --plot docs/zoo-photo-rd.png
    ;;
  bench)
    mkdir -p bench-out
    "$PY" benchmarks/bench_zoo.py photo:${BENCH_QUALITY:-2} --json bench-out/zoo-photo-speed.json
    "$PY" -m edgeae.zoo.card docs/MODELS.md --speed photo=bench-out/zoo-photo-speed.json > /dev/null
    "$EA" models --pretrained
    ;;
  *) echo "usage: $0 train|build|bench|pack" >&2; exit 2 ;;
esac
