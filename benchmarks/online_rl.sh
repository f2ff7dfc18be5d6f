#!/usr/bin/env bash
# Online RL evidence run: GRPO and RLOO with the DESIGN.md section 5 recipe (LoRA r=16 on every
# linear layer, 16 prompts x 8 generations per step, T=0.8, beta 0.04, lr 2e-4, 60 steps, gold
# reward on the arithmetic task), then a held-out evaluation of each (greedy accuracy, KL).
# Compare with the PPO row at the same wall time: wall_seconds.txt holds each stage's seconds,
# and each run's per-step log (rewards/gold/mean, kl, ...) is copied next to its eval.
# Stages whose output exists are skipped, so an interrupted run resumes where it stopped.
#
#   bash benchmarks/online_rl.sh [OUT_DIR]       # ~25 min on 2 CPU cores (HF generation)
#   STEPS=1 N_PROMPTS=8 TRAIN_ARGS="--batch-size 2 --num-generations 2 --gradient-accumulation-steps 1" \
#     EVAL_ARGS="--limit 8" bash benchmarks/online_rl.sh /tmp/smoke      # plumbing check, minutes
set -euo pipefail
OUT=${1:-docs/benchmarks/online_rl}
BONSERVE=${BONSERVE:-.venv/bin/bonserve}
BASE=${BASE:-smollm2-135m-instruct}
STEPS=${STEPS:-60}
N_PROMPTS=${N_PROMPTS:-}            # default: all 2000 train prompts (60 steps use 960)
EVAL_ARGS=${EVAL_ARGS:-}            # e.g. "--n 8" for pass@8 / per-sample accuracy too
TRAIN_ARGS=${TRAIN_ARGS:-}          # appended to the recipe (later flags win), e.g. for a smoke run
mkdir -p "$OUT"
# shellcheck source=benchmarks/lib.sh
source "$(dirname "$0")/lib.sh"

RECIPE=(--base "$BASE" --task arithmetic --reward gold --lora-r 16 --batch-size 16 --num-generations 8
        --temperature 0.8 --beta 0.04 --learning-rate 2e-4 --max-steps "$STEPS" --save-steps "$STEPS")
if [[ -n $N_PROMPTS ]]; then RECIPE+=(--n-prompts "$N_PROMPTS"); fi

for kind in grpo rloo; do
  # shellcheck disable=SC2086  # TRAIN_ARGS is a list of flags
  train "$kind" "arith-$kind" "${RECIPE[@]}" $TRAIN_ARGS
  # shellcheck disable=SC2086  # EVAL_ARGS is a list of flags
  stage "eval-$kind" "$OUT/eval-$kind.json" "$BONSERVE" eval --model "arith-$kind" --task arithmetic \
    $EVAL_ARGS --out "$OUT/eval-$kind.json"
done
