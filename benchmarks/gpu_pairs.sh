#!/usr/bin/env bash
# Issue 14's comparison pairs on one machine at once: the factorized `codec` and the scale-only `hyperprior`
# (float h_s in training, integerised at export) at each lambda, the same recipe and the same steps, every run
# in the background; resumable (a second call continues what a first one stopped). Then, here:
#   for r in OUT/*; do edgeae export $r --int8 --out bundles/$(basename $r); done
#   python benchmarks/bench_hyperprior.py --hyper bundles/hq_0.0035,... --codec bundles/c_0.0035,...
#
#   bash benchmarks/gpu_pairs.sh           # on this machine (CPU, 1 thread a run, 6 runs on 2 cores)
#
# On a lent GPU (the device tool: 10 min a call, 15 min a session in all; it returns at most 8 files of 16 MiB,
# 64 MiB, two folders deep, so the runs travel back through benchmarks/runpack.py), after `bash
# benchmarks/zoo_photo.sh pack` here, one call with carry ["gpu-data"] and timeout_s 600 (MINUTES stops every
# run with a checkpoint in time for the pack; the tracked tree must stay small, tests/test_repo_size.py):
#   EA="python3 -m edgeae" SHARED=gpu-data DEVICE=cuda THREADS=1 BATCH=8 CROP=256 STEPS=20000 MINUTES=7 VAL_EVERY=1000 \
#     OUT=/tmp/pairs bash benchmarks/gpu_pairs.sh; python3 benchmarks/runpack.py pack $OUT/pack /tmp/pairs/[ch]_0*/
# then here: python benchmarks/runpack.py unpack FILES_AT/pack runs/gpu (slim checkpoints: `edgeae train
# --resume RUN --max-steps STEP` finishes one where it stopped; OUT=runs/gpu continues them all). Ten runs at
# 64/128 channels pack to ~49 MiB; at Balle et al.'s sizes one pair is 36 MiB, 18 MiB with `--half` (three pairs).
# (Checked end to end on CPU with EA=.venv/bin/edgeae DEVICE=cpu STEPS=5000 MINUTES=1; never on a GPU yet.)
#
# INIT=DIR (new runs only): start each run from DIR's run of the same name (`edgeae train --init`: its weights,
# a fresh optimiser and schedule; a scale-only h_* also starts a mean-scale one), e.g. checkpoints/balle-s12
# unpacked (its README: other lambdas from its pair) or pairs-s9 from git history (checkpoints/README.md).
#
# Variables: SET, CODEC_SET, VAL_EVERY, LAMBDAS, FAMILIES (default "codec hyperprior"), STEPS, CROP, CHANNELS, LATENT (new runs only), BATCH, LR, DEVICE, THREADS, PRECISION (bf16: ~2.8x faster steps on an AMX
# CPU at equal quality per step, benchmarks/bench_train_precision.py), SHARED, OUT, MINUTES, EA, HYPER_SET (the
# hyperprior's --set options; default scale-only, float h_s; mean-scale: add "--set means=true --set
# hyper_signed=true": worse from scratch at 7,000 CPU steps, better as 8,000 steps on from the 19,500-step
# scale-only runs, -10.8% vs -9.1% BD-rate: docs/HYPERPRIOR.md "Session 7").
set -euo pipefail
cd "$(dirname "$0")/.."
read -ra EA <<< "${EA:-.venv/bin/edgeae}"
FAMILIES=${FAMILIES:-"codec hyperprior"}
STEPS=${STEPS:-7000}
CROP=${CROP:-320}
CHANNELS=${CHANNELS:-64}  # N; Balle et al.'s sizes: CHANNELS=128 LATENT=192 HYPER_SET="--set qat=false --set hyper_latent_channels=128" (a GPU's job)
LATENT=${LATENT:-128}     # M, the latent channels
BATCH=${BATCH:-2}
LR=${LR:-4e-4}
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-1}
# bf16 where it is native (a GPU, or a CPU with AMX / AVX512-BF16: ~2.8x faster steps); elsewhere fp32, since
# an emulated bf16 step took 13x as long as fp32 on an AMD EPYC (AVX2) host (docs/MODELS.md, session 14)
if [[ ${DEVICE:-cpu} != cpu ]] || grep -qE 'amx_bf16|avx512_bf16' /proc/cpuinfo 2>/dev/null; then
  PRECISION=${PRECISION:-bf16}
else
  PRECISION=${PRECISION:-fp32}
fi
SHARED=${SHARED:-../shared/data}
OUT=${OUT:-runs/pairs}
MINUTES=${MINUTES:-0}
HYPER_SET=${HYPER_SET:-"--set qat=false"}
CODEC_SET=${CODEC_SET:-}  # the codec's --set options (and SET: both families', e.g. SET="--set rate_ste=true")
SET=${SET:-}
INIT=${INIT:-}
SEED=${SEED:-0}
# LAMBDAS: those of the runs OUT already holds (resuming), else those INIT has, else five points a curve: with
# three, one run 0.1 dB off its partner moved the BD-rate from -9% to -14% (docs/HYPERPRIOR.md, "Session 11")
lambdas_in() { find "$1" -maxdepth 1 -name '[ch]_0*' \( -type d -o -type l \) 2>/dev/null | sed 's#.*/[ch]_##' | sort -gu | xargs || true; }
[[ -z ${LAMBDAS:-} ]] && LAMBDAS=$(lambdas_in "${OUT:-runs/pairs}")
[[ -z $LAMBDAS && -n $INIT ]] && LAMBDAS=$(lambdas_in "$INIT")
LAMBDAS=${LAMBDAS:-"0.0018 0.0035 0.007 0.013 0.026"}
VAL_EVERY=${VAL_EVERY:-1}  # epochs between validations (19 whole photos, ~50 s with 6 runs on 2 cores)
STOP=(); [[ $MINUTES != 0 ]] && STOP=(timeout -s TERM "${MINUTES}m")  # SIGTERM: the trainer checkpoints
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
mkdir -p "$OUT"
where=(--threads "$THREADS" --device "$DEVICE" --data "$SHARED/photos/train" --val-data "$SHARED/photos/val"
       --val-every "$VAL_EVERY")
pids=()
for lmbda in $LAMBDAS; do
  for family in $FAMILIES; do
    run=$OUT/${family:0:1}_$lmbda
    if [[ -f $run/config.json ]]; then
      cmd=(train --resume "$run" "${where[@]}" --max-steps "$STEPS")  # STEPS may lengthen or shorten it
    else
      extra=(); read -ra extra <<< "$SET $([[ $family == hyperprior ]] && echo "$HYPER_SET" || echo "$CODEC_SET")"
      [[ -n $INIT ]] && extra+=(--init "$INIT/${family:0:1}_$lmbda")
      cmd=(train --model "$family" --dataset images "${where[@]}" --color rgb --crop "$CROP" --crops-per-image 1
           --val-crop 256 --channels "$CHANNELS" --latent "$LATENT" --set downsamplings=4 "${extra[@]}" --lmbda "$lmbda"
           --batch-size "$BATCH" --lr "$LR" --lr-decay cosine --epochs 100000 --max-steps "$STEPS"
           --seed "$SEED" --precision "$PRECISION"
           --checkpoint-minutes 2 --out "$run")
    fi
    "${STOP[@]}" "${EA[@]}" "${cmd[@]}" > "$run.log" 2>&1 &
    pids+=($!)
  done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done  # 124 = stopped by MINUTES (checkpointed)
tail -n 2 "$OUT"/*.log
exit $(( status == 124 ? 0 : status ))
