#!/usr/bin/env bash
# The evidence of docs/benchmarks/training.md: base samples -> gold-judged pairs -> DPO, a
# reward model and SFT on the pairs' chosen (gold-correct) replies -> PPO (gold reward) ->
# held-out evaluation of each on the same 300 additions (greedy accuracy, KL from the base),
# plus the reward model's pairwise accuracy and BoN-8 on base samples (first 100 held-out
# prompts x 8). Every tuned policy starts from the base, so each row is one method's effect.
# Stages whose output exists are skipped, so an interrupted run resumes where it stopped.
#
#   bash benchmarks/training_pipeline.sh [OUT_DIR]      # ~1 h on 2 CPU cores
set -euo pipefail
OUT=${1:-docs/benchmarks/training}
BONSERVE=${BONSERVE:-.venv/bin/bonserve}
BASE=${BASE:-smollm2-135m-instruct}
STEPS=${STEPS:-60}
PPO_STEPS=${PPO_STEPS:-30}
mkdir -p "$OUT"
# shellcheck source=benchmarks/lib.sh
source "$(dirname "$0")/lib.sh"

stage prefs-base "$OUT/prefs-base.jsonl" "$BONSERVE" data prefs --policy "$BASE" \
  --task arithmetic --split train --n-prompts 600 -k 8 --temperature 0.8 \
  --out "$OUT/prefs-base.jsonl"
train dpo arith-dpo --data "$OUT/prefs-base.jsonl" --base "$BASE" --max-steps "$STEPS"
train rm arith-rm --data "$OUT/prefs-base.jsonl" --base "$BASE" --max-steps "$STEPS"
stage sft-data "$OUT/sft-base.jsonl" "$BONSERVE" data sft --from-prefs "$OUT/prefs-base.jsonl" \
  --min-score 1 --out "$OUT/sft-base.jsonl"
train sft arith-sft --data "$OUT/sft-base.jsonl" --base "$BASE" --max-steps "$STEPS"
stage eval-base "$OUT/eval-base.json" "$BONSERVE" eval --model "$BASE" --task arithmetic \
  --no-kl --out "$OUT/eval-base.json"
stage eval-dpo "$OUT/eval-dpo.json" "$BONSERVE" eval --model arith-dpo --task arithmetic \
  --out "$OUT/eval-dpo.json"
stage eval-sft "$OUT/eval-sft.json" "$BONSERVE" eval --model arith-sft --task arithmetic \
  --out "$OUT/eval-sft.json"
stage eval-base-rm "$OUT/eval-base-bon8.json" "$BONSERVE" eval --model "$BASE" --task arithmetic \
  --limit 100 --n 8 --temperature 0.8 --reward-model arith-rm --no-kl --out "$OUT/eval-base-bon8.json"
train ppo arith-ppo --base "$BASE" --task arithmetic --reward gold --batch-size 32 \
  --mini-batch-size 8 --num-ppo-epochs 2 --temperature 0.7 --max-new-tokens 32 \
  --learning-rate 3e-4 --kl-coef 0.02 --max-steps "$PPO_STEPS" --save-steps 5
stage eval-ppo "$OUT/eval-ppo.json" "$BONSERVE" eval --model arith-ppo --task arithmetic \
  --out "$OUT/eval-ppo.json"
