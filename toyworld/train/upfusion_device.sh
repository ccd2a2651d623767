#!/usr/bin/env bash
# Train both stages of the toy UpFusion (config toy-v2) on a GPU machine in minutes, gate stage 1, benchmark.
#
#   OUT=/path/to/out bash toyworld/train/upfusion_device.sh            # the real run (a GPU, ~10 minutes)
#   SIZE=tiny OUT=/tmp/upf-device bash toyworld/train/upfusion_device.sh  # the same steps at toy size, on a CPU
#
# With the device tool: run from the repo root with OUT=$OUT; the pipeline folder lands in $OUT/toy-upfusion-v2
# (safetensors, a few MB) and, packed for the trip back (the device returns at most 8 files), as
# $OUT/toy-upfusion-v2.tar.gz; the loss logs, the gate's and the benchmark's JSON beside it. Stage 2 runs only
# when the stage-1 gate passes (benchmarks/upfusion_gate.py exits 0), else the script stops with the gate's code;
# FORCE_STAGE2=1 goes on regardless (the tiny CPU rehearsal, whose untrained model cannot pass).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?set OUT to the output folder}"
SIZE="${SIZE:-full}"
mkdir -p "$OUT"
if [ "$SIZE" = tiny ]; then
  CONFIG=tiny-v2 OBJECTS=8 VIEWS=8 BATCH=2 RAYS=64 STEPS1=20 STEPS2=10 EVAL=4 QUERIES=2 SAMPLES=1 DSTEPS=2
  THREADS=1
else
  CONFIG=toy-v2 OBJECTS=4000 VIEWS=12 BATCH=128 RAYS=1024 STEPS1=30000 STEPS2=20000 EVAL=100 QUERIES=4 SAMPLES=4 DSTEPS=10
  THREADS=8
fi
MODEL="$OUT/toy-upfusion-v2"
COMMON=(--config "$CONFIG" --out "$MODEL" --objects "$OBJECTS" --views "$VIEWS" --batch "$BATCH" --seed 0
        --threads "$THREADS" --save-every 2 --minutes 600)
RESUME=()
[ -f "$MODEL/checkpoint/state.json" ] && RESUME=(--resume)

python -m toyworld.train.upfusion --stage upsrt "${COMMON[@]}" "${RESUME[@]}" --rays "$RAYS" --queries 2 \
  --input-queries 0.2 --lr-upsrt 3e-4 --warmup 500 --schedule-steps "$STEPS1" --max-steps "$STEPS1"
mv "$OUT/toy-upfusion-v2-loss.jsonl" "$OUT/loss-upsrt.jsonl" 2>/dev/null || true

set +e
python -m benchmarks.upfusion_gate --model "$MODEL/checkpoint" --objects "$EVAL" --queries "$QUERIES" \
  --threads "$THREADS" --out "$OUT/gate.json"
gate=$?
set -e
if [ "$gate" -ne 0 ] && [ "${FORCE_STAGE2:-0}" != 1 ]; then
  echo "stage-1 gate failed (exit $gate): stage 2 not trained" >&2
  exit "$gate"
fi

python -m toyworld.train.upfusion --stage diffusion "${COMMON[@]}" --lr-diffusion 5e-4 --warmup 500 \
  --schedule-steps "$STEPS2" --max-steps "$STEPS2"
mv "$OUT/toy-upfusion-v2-loss.jsonl" "$OUT/loss-diffusion.jsonl" 2>/dev/null || true
rm -f "$MODEL/checkpoint/pool.safetensors"
python -m benchmarks.upfusion_toy --model "$MODEL" --objects "$EVAL" --queries "$QUERIES" --samples "$SAMPLES" \
  --steps "$DSTEPS" --threads "$THREADS" --out "$OUT/upfusion_toy.json" --sheet "$OUT/upfusion_samples.png"
tar -czf "$OUT/toy-upfusion-v2.tar.gz" -C "$OUT" --exclude checkpoint toy-upfusion-v2
tar -czf "$OUT/checkpoint.tar.gz" -C "$MODEL" --exclude pool.safetensors checkpoint
rm -rf "$MODEL"
ls -la "$OUT"
