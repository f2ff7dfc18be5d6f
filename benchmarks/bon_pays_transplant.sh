#!/usr/bin/env bash
# Does a reward model rank a tuned policy's replies better with more pairs of the policy's own
# kind of mistake? The PPO policy's mixed recipe (`rm-ppo-mix`: 898 on-policy + 2286 base pairs,
# bon_pays_ppo.md) plus one transplanted pair per remaining train prompt
# (benchmarks/transplant_pairs.py: the policy's replies and errors moved onto 1700 other train
# prompts), one epoch, then judged exactly as bon_pays_ppo.md judged `rm-ppo-mix`:
# 1. pairs, 2. the reward model, 3. validation prompts' samples (benchmarks/rm_recipes.py),
# 4. BoN-8 on the 300 held-out additions (`bonserve eval`, every selector, recorded).
#
#   bash benchmarks/bon_pays_transplant.sh                      # ~75 min on 2 cores
set -euo pipefail
OUT=${1:-docs/benchmarks/bon_pays_transplant}
BONSERVE=${BONSERVE:-.venv/bin/bonserve}
PYTHON=${PYTHON:-.venv/bin/python}
PPO=docs/benchmarks/bon_pays_ppo
POLICY=arith-ppo-merged
RM=${RM:-rm-ppo-transplant}
RM_BUDGET=${RM_BUDGET:-3300}
mkdir -p "$OUT"
# shellcheck source=benchmarks/lib.sh
source "$(dirname "$0")/lib.sh"

"$PYTHON" benchmarks/transplant_pairs.py --samples "$PPO/prefs-train.jsonl.samples.jsonl" \
  --exclude "$PPO/split/val.samples.jsonl" --policy "$POLICY" --per-prompt 1 \
  --out "$OUT/transplant.jsonl" >"$OUT/transplant.stats.json"
cat "$PPO/split/train-mix.jsonl" "$OUT/transplant.jsonl" >"$OUT/train-mix-transplant.jsonl"
pairs=$(wc -l <"$OUT/train-mix-transplant.jsonl")
train rm "$RM" --data "$OUT/train-mix-transplant.jsonl" --eval-data "$PPO/split/val.jsonl" \
  --for-policy "$POLICY" --max-steps $(((pairs + 7) / 8)) --max-time-s "$RM_BUDGET" --learning-rate 2e-4
stage recipes "$OUT/rm_recipes/results.json" "$PYTHON" benchmarks/rm_recipes.py \
  --samples "$PPO/split/val.samples.jsonl" --reward-models "$RM" --n 8 --out "$OUT/rm_recipes"
stage eval "$OUT/eval-bon8.json" "$BONSERVE" eval --model "$POLICY" --task arithmetic --n 8 \
  --temperature 0.7 --max-tokens 48 --reward-model "$RM" --no-kl --enforce-eager --record \
  --out "$OUT/eval-bon8.json"
