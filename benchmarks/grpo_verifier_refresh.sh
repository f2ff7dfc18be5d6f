#!/usr/bin/env bash
# GRPO (or RLOO: KIND=rloo) with the generative verifier as its learned reward, refreshed on the
# policy's own completions every 6 generation rounds (training/refreshed_reward.py), beside the
# gold-reward run of docs/benchmarks/online_rl.md: the same recipe, the same 900 s training budget,
# then greedy on the 300 held-out additions (accuracy, KL). Needs verifier-arith-v
# (docs/benchmarks/verifier.md). Run nothing else meanwhile: the budget is wall time.
#
#   bash benchmarks/grpo_verifier_refresh.sh [OUT_DIR]     # BUDGET + ~10 min of evaluation
set -euo pipefail
OUT=${1:-docs/benchmarks/grpo_verifier_refresh}
BONSERVE=${BONSERVE:-.venv/bin/bonserve}
BASE=${BASE:-smollm2-135m-instruct}
KIND=${KIND:-grpo}
RM=${RM:-verifier-arith-v}
REPLAY=${REPLAY:-docs/benchmarks/verifier/train.jsonl}   # the rows RM was trained on
BUDGET=${BUDGET:-900}
mkdir -p "$OUT"
# shellcheck source=benchmarks/lib.sh
source "$(dirname "$0")/lib.sh"

name="$KIND-$RM-refresh-${BUDGET}s"
train "$KIND" "$name" --base "$BASE" --task arithmetic --reward rm --reward-model "$RM" \
  --max-steps 30 --max-time-s "$BUDGET" --save-steps 30 --lora-r 16 --batch-size 4 --num-generations 8 \
  --gradient-accumulation-steps 4 --max-completion-length 32 --temperature 0.8 --beta 0.04 \
  --learning-rate 2e-4 --rm-refresh-every 6 --rm-refresh-steps 4 --rm-refresh-batch-size 8 \
  --rm-refresh-learning-rate 1e-5 --rm-refresh-replay "$REPLAY" --rm-refresh-new-share 0.5
cp "$RUNS/$name/rm_refresh_log.jsonl" "$OUT/$name.rm_refresh_log.jsonl" 2>/dev/null || true
"$BONSERVE" registry show "$name-rm" >"$OUT/$name-rm.manifest.json" 2>/dev/null || true
stage "eval-$name" "$OUT/eval-$name.json" "$BONSERVE" eval --model "$name" --task arithmetic \
  --out "$OUT/eval-$name.json"
