#!/usr/bin/env bash
# Stage 1 (UpSRT) of the second toy UpFusion (config toy-v2) on this project's 2-core CPU machine, resumable
# across sessions: the same flags on every run (the checkpoint's batches and schedule depend on them).
#
#   nohup setsid bash toyworld/train/upfusion_v2_cpu.sh > upfusion-v2.log 2>&1 &
#
# The checkpoint (weights, AdamW state, state.json; safetensors + JSON) lives in assets/toy-upfusion-v2/checkpoint
# and is committed between sessions without its pool.safetensors (re-rendered deterministically, ~1 minute).
# The loss log goes to assets/toy-upfusion-v2-loss.jsonl. Gate a checkpoint at any time with
#   python -m benchmarks.upfusion_gate --model assets/toy-upfusion-v2/checkpoint
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-assets/toy-upfusion-v2}"
RESUME=()
[ -f "$OUT/checkpoint/state.json" ] && RESUME=(--resume)
exec python -m toyworld.train.upfusion --stage upsrt --config toy-v2 --out "$OUT" \
  --objects 2000 --views 12 --batch 16 --rays 1024 --queries 2 --input-queries 0.2 \
  --lr-upsrt 3e-4 --warmup 500 --schedule-steps 40000 --max-steps 40000 --minutes 6000 \
  --save-every 5 --seed 0 --threads 1 "${RESUME[@]}"
