#!/usr/bin/env bash
# The evidence run of docs/benchmarks/training.md: base samples -> gold-judged pairs -> DPO and a
# reward model -> held-out evaluation of base and DPO (greedy, pass@8, BoN-8, KL, RM pairwise).
# Stages whose output exists are skipped, so an interrupted run resumes where it stopped.
#
#   bash benchmarks/training_pipeline.sh [OUT_DIR]      # ~30 min on 2 CPU cores
set -euo pipefail
OUT=${1:-docs/benchmarks/training}
BONSERVE=${BONSERVE:-.venv/bin/bonserve}
BASE=${BASE:-smollm2-135m-instruct}
STEPS=${STEPS:-60}
mkdir -p "$OUT"

stage() {  # stage NAME OUTPUT CMD...: run CMD unless OUTPUT exists; log its wall time
  local name=$1 output=$2; shift 2
  if [[ -e $output ]]; then echo "== $name: $output exists, skipped"; return; fi
  echo "== $name: $*"
  local t0=$SECONDS
  "$@"
  echo "$name $((SECONDS - t0))" >>"$OUT/wall_seconds.txt"
}
entry_exists() { "$BONSERVE" registry show "$1" >/dev/null 2>&1; }
train() {  # train KIND NAME ARGS...: skip when the registry entry exists
  local kind=$1 name=$2; shift 2
  if entry_exists "$name"; then echo "== train $kind: entry $name exists, skipped"; return; fi
  stage "train-$kind" /nonexistent "$BONSERVE" train "$kind" --name "$name" "$@"
}

stage prefs-base "$OUT/prefs-base.jsonl" "$BONSERVE" data prefs --policy "$BASE" \
  --task arithmetic --split train --n-prompts 600 -k 8 --temperature 0.8 \
  --out "$OUT/prefs-base.jsonl"
train dpo arith-dpo --data "$OUT/prefs-base.jsonl" --base "$BASE" --max-steps "$STEPS"
train rm arith-rm --data "$OUT/prefs-base.jsonl" --base "$BASE" --max-steps "$STEPS"
stage eval-base "$OUT/eval-base.json" "$BONSERVE" eval --model "$BASE" --task arithmetic \
  --n 8 --temperature 0.8 --reward-model arith-rm --out "$OUT/eval-base.json"
stage eval-dpo "$OUT/eval-dpo.json" "$BONSERVE" eval --model arith-dpo --task arithmetic \
  --n 8 --temperature 0.8 --reward-model arith-rm --out "$OUT/eval-dpo.json"
