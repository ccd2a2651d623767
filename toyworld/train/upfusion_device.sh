#!/usr/bin/env bash
# Train both stages of the toy UpFusion (config toy-v2) on a GPU machine in minutes, gate stage 1, benchmark.
#
#   OUT=/path/to/out bash toyworld/train/upfusion_device.sh            # the real run (a GPU)
#   SIZE=tiny OUT=/tmp/upf-device bash toyworld/train/upfusion_device.sh  # the same steps at toy size, on a CPU
#
# With the device tool: run from the repo root with OUT=$OUT. Whatever exists when the script ends (also on a
# failed gate or a `timeout`) is packed for the trip back (the device returns at most 8 files of 16 MiB):
# $OUT/toy-upfusion-v2.tar.gz (the model folder: stage weights as safetensors, state.json; no optimizer state, no
# pool), the loss logs and the gate's JSON. Stage 2 runs only when the stage-1 gate passes
# (benchmarks/upfusion_gate.py exits 0), else the script stops with the gate's code; FORCE_STAGE2=1 goes on
# regardless (the tiny CPU rehearsal, whose untrained model cannot pass). Each stage is bounded by STAGE_SECONDS.
# The benchmark (CPU code) is not run there: unpack the model here and run benchmarks/upfusion_toy.py.
# Known limits: diffusers is not on the device image (carry its wheel, see the device README), and the step
# counts below were not measured on a GPU (size them from a first short call).
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
PY="${PYTHON:-python3}"
STAGE_SECONDS="${STAGE_SECONDS:-240}"
pack() {
  mv "$OUT/toy-upfusion-v2-loss.jsonl" "$OUT/loss.jsonl" 2>/dev/null || true
  if [ -d "$MODEL" ]; then
    tar -czf "$OUT/toy-upfusion-v2.tar.gz" -C "$OUT" --exclude pool.safetensors --exclude optimizer.safetensors \
      --exclude '*.tmp' --exclude '*.old' toy-upfusion-v2
    rm -rf "$MODEL"
  fi
  ls -la "$OUT"
}
trap pack EXIT
COMMON=(--config "$CONFIG" --out "$MODEL" --objects "$OBJECTS" --views "$VIEWS" --batch "$BATCH" --seed 0
        --threads "$THREADS" --save-every 2 --minutes 600)

timeout "$STAGE_SECONDS" "$PY" -m toyworld.train.upfusion --stage upsrt "${COMMON[@]}" --rays "$RAYS" --queries 2 \
  --input-queries 0.2 --lr-upsrt 3e-4 --warmup 500 --schedule-steps "$STEPS1" --max-steps "$STEPS1" \
  || echo "stage 1 ended by its bound (exit $?): gating its last checkpoint" >&2

set +e
"$PY" -m benchmarks.upfusion_gate --model "$MODEL/checkpoint" --objects "$EVAL" --queries "$QUERIES" \
  --threads "$THREADS" --out "$OUT/gate.json"
gate=$?
set -e
if [ "$gate" -ne 0 ] && [ "${FORCE_STAGE2:-0}" != 1 ]; then
  echo "stage-1 gate failed (exit $gate): stage 2 not trained" >&2
  exit "$gate"
fi

timeout "$STAGE_SECONDS" "$PY" -m toyworld.train.upfusion --stage diffusion "${COMMON[@]}" --lr-diffusion 5e-4 \
  --warmup 500 --schedule-steps "$STEPS2" --max-steps "$STEPS2" \
  || echo "stage 2 ended by its bound (exit $?): its last checkpoint is packed" >&2
