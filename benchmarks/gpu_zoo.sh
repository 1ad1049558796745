#!/usr/bin/env bash
# Issue 15's photo codec on a lent GPU in ONE device call: two Balle-sized `hyperprior-vr` runs at once (the GPU is
# host-bound with one), both warm from INIT_PACK's run INIT_RUN, each sized to end with its cosine schedule
# just inside the call. The schedule needs the step count, the step count needs the speed: each run starts with a
# guess, is stopped (SIGTERM: a checkpoint) after PROBE seconds, and is resumed with --max-steps set from the
# speed it measured, so no step is wasted and the learning rate reaches its floor. Then both come back through
# benchmarks/runpack.py (full precision, Adam moments left out).
#
# Here first: bash benchmarks/zoo_photo.sh pack   (gpu-data/, git-ignored). Then one device call, carry ["gpu-data"],
# timeout_s 600:
#   bash benchmarks/gpu_zoo.sh
# and here: python benchmarks/runpack.py unpack FILES_AT/pack runs/gpu ; RUN=runs/gpu/bvrA bash benchmarks/zoo_photo.sh build
#
# Checked end to end on this CPU host with:
#   EA=.venv/bin/edgeae PY=.venv/bin/python DEVICE=cpu BATCH_A=2 BATCH_B=2 CROP=64 CROPS=1 BUDGET=150 PROBE=45 \
#     OUT=/tmp/gz bash benchmarks/gpu_zoo.sh
#
# Session 14 ran it with INIT_PACK=checkpoints/balle-s12 INIT_RUN=h_0.013 (that pack is in git history now:
# checkpoints/README.md): 56 / 52 steps/s for batch 16 / 32 side by side, 23,014 / 21,245 steps (bvr-s14's README).
# Variables: INIT_PACK (a runpack.py pack, default checkpoints/dist-s16: the shipped model, whose g_s is
# 128/64/64 wide, so SET_A / SET_B default to that width; bvrA's full-width pack is checkpoints/bvr-s14 in git
# history: checkpoints/README.md), INIT_RUN (its run to start from, default w64a: a plain hyperprior or a
# hyperprior-vr with as many lambdas), INIT_A / INIT_B (a run folder each; empty: from scratch),
# SET_A / SET_B (more options per run: a stronger synthesis, "--set extra_layers=1", must start from scratch or
# from a run of its shape; docs/MODELS.md "Fourteenth session" says why that is the next experiment), BUDGET (seconds from the start to the end of training, default 490 of the call's 600), PROBE, DEVICE,
# LAMBDAS_A/B, BATCH_A/B, LR_A/B, CROP, CROPS (crops per image per epoch), THREADS (per run), OUT, EA, PY.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # runpack.py imports edgeae from the tree
T0=$(date +%s)
PY=${PY:-python3}
read -ra EA <<< "${EA:-python3 -m edgeae}"
OUT=${OUT:?set OUT (the device tool sets it)}
BUDGET=${BUDGET:-490}
PROBE=${PROBE:-75}
DEVICE=${DEVICE:-cuda}
CROP=${CROP:-256}
CROPS=${CROPS:-16}
THREADS=${THREADS:-4}
LAMBDAS_A=${LAMBDAS_A:-"[0.0035,0.0075,0.016,0.034,0.075,0.18]"}
LAMBDAS_B=${LAMBDAS_B:-$LAMBDAS_A}
BATCH_A=${BATCH_A:-16}
BATCH_B=${BATCH_B:-32}
LR_A=${LR_A:-1e-4}
LR_B=${LR_B:-1e-4}
WORK=${WORK:-/tmp/gz-work}
rm -rf "$WORK"; mkdir -p "$WORK" "$OUT"
[[ $DEVICE == cuda ]] && nvidia-smi -L
"$PY" benchmarks/runpack.py unpack "${INIT_PACK:-checkpoints/dist-s16}" "$WORK/init" || exit 1

elapsed() { echo $(( $(date +%s) - T0 )); }
common=(train --model hyperprior-vr --dataset images --data gpu-data/photos/train --val-data gpu-data/photos/val
        --crop "$CROP" --crops-per-image "$CROPS" --val-crop 256 --color rgb --channels 128 --latent 192
        --set downsamplings=4 --set qat=false --set hyper_channels=128 --set hyper_latent_channels=128
        --lr-decay cosine --epochs 100000 --device "$DEVICE" --threads "$THREADS" --precision bf16
        --checkpoint-minutes 0.5 --val-every 4 --seed 1)
INIT_A=${INIT_A-$WORK/init/${INIT_RUN:-w64a}}
INIT_B=${INIT_B-$INIT_A}  # INIT_B= (empty): run B from scratch, e.g. with SET_B="--set extra_layers=1"
WIDTHS="--set synthesis_widths=[128,64,64]"  # the shipped g_s (session 16); SET_A= / SET_B= for N everywhere
SET_A=${SET_A-$WIDTHS}
read -ra SET_A <<< "$SET_A"
read -ra SET_B <<< "${SET_B-${SET_A[*]}}"
declare -A PID
start() {  # name lambdas batch lr init [more options]
  local name=$1 lambdas=$2 batch=$3 lr=$4 init=$5; shift 5
  "${EA[@]}" "${common[@]}" --set "lmbdas=$lambdas" --batch-size "$batch" --lr "$lr" --max-steps 100000 \
    ${init:+--init "$init"} "$@" --out "$WORK/$name" > "$WORK/$name.log" 2>&1 &
  PID[$name]=$!
}
start bvrA "$LAMBDAS_A" "$BATCH_A" "$LR_A" "$INIT_A" "${SET_A[@]}"
start bvrB "$LAMBDAS_B" "$BATCH_B" "$LR_B" "$INIT_B" "${SET_B[@]}"
sleep "$PROBE"
for r in bvrA bvrB; do kill -TERM "${PID[$r]}" 2>/dev/null; done
wait
echo "probe ended at $(elapsed) s"
for r in bvrA bvrB; do tail -n 4 "$WORK/$r.log"; done

# steps to ask for: where each stopped + its measured speed x the seconds left (less ~25 s to reload and finish)
left=$(( BUDGET - $(elapsed) - 25 ))
for r in bvrA bvrB; do
  target=$("$PY" - "$WORK/$r/checkpoint/state.json" "$left" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))
seg = s["devices"][-1]
done = seg["last_step"] - seg["first_step"]  # steps after the first, over the seconds after it
rate = done / max(seg["seconds"] - seg.get("warm_seconds", 0.0), 1e-9)
print(int(s["steps"] + 0.95 * rate * max(0, int(sys.argv[2]))))
print(f"{sys.argv[1]}: {done} steps in {seg['seconds']:.1f} s = {rate:.2f} steps/s", file=sys.stderr)
PYEOF
  ) || { echo "no checkpoint for $r" >&2; continue; }
  echo "$r: resume to step $target"
  timeout -s TERM $(( BUDGET - $(elapsed) + 20 )) "${EA[@]}" train --resume "$WORK/$r" --max-steps "$target" \
    --device "$DEVICE" --threads "$THREADS" > "$WORK/$r.resume.log" 2>&1 &
done
wait
echo "training ended at $(elapsed) s"
for r in bvrA bvrB; do grep -E "epoch|steps|val" "$WORK/$r.resume.log" | tail -n 6; done
runs=(); for r in bvrA bvrB; do [[ -f $WORK/$r/config.json ]] && runs+=("$WORK/$r"); done
"$PY" benchmarks/runpack.py pack "$OUT/pack" "${runs[@]}" || "$PY" benchmarks/runpack.py pack "$OUT/pack" --half "${runs[@]}"
cat "$WORK"/*.log > "$OUT/logs.txt"
echo "packed at $(elapsed) s"; ls -la "$OUT/pack"
