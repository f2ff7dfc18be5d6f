#!/usr/bin/env bash
# Best-of-N on a tuned policy with a reward model trained on that policy's own samples:
#
# 1. on-policy reward data: k=8 samples of every train prompt (2000) from POLICY at TEMPERATURE,
#    every (correct, wrong) pair of distinct replies (`data prefs --pairs all`);
# 2. the last 300 of those prompts set aside as validation (benchmarks/split_prefs.py);
# 3. three reward-model recipes, one epoch over their pairs each (cut at RM_BUDGET seconds):
#    LoRA on the bundled base model (the recipe the base's reward model used), LoRA on the
#    policy itself (the InstructGPT choice: the reward model starts from the model whose
#    answers it judges), and, with MIX set, LoRA on the base over these pairs plus an earlier
#    policy's (MIX: its pairs file; prompts must not overlap the validation ones);
# 4. all compared on the validation prompts' samples (benchmarks/rm_recipes.py), beside the
#    reward models in COMPARE (e.g. the earlier policy's own): the one with the larger share of
#    the oracle gap captured (then pairwise accuracy) is kept;
# 5. `bonserve eval` with BoN-8 at TEMPERATURE on the 300 held-out prompts with that reward
#    model, every selector, per-prompt outcomes, recorded for the server's pairing gate.
# Stages whose output exists are skipped, so an interrupted run resumes where it stopped.
#
#   POLICY=arith-ppo-merged TEMPERATURE=0.7 TAG=ppo N_PROMPTS=1300 RM_BUDGET=1500 \
#     MIX=docs/benchmarks/bon_pays_t04/prefs-base-train.jsonl COMPARE=rm-base-t04-epoch \
#     bash benchmarks/bon_pays_policy.sh                                                  # ~1.5 h, 2 cores
set -euo pipefail
POLICY=${POLICY:?set POLICY to the registry entry to rerank}
TAG=${TAG:?set TAG, the short name of the policy in entry and file names}
TEMPERATURE=${TEMPERATURE:-0.7}
OUT=${1:-docs/benchmarks/bon_pays_$TAG}
BONSERVE=${BONSERVE:-.venv/bin/bonserve}
PYTHON=${PYTHON:-.venv/bin/python}
N_PROMPTS=${N_PROMPTS:-2000}
VALIDATION=${VALIDATION:-300}
RM_BUDGET=${RM_BUDGET:-2700}        # seconds per reward model; one epoch usually ends first
MIX=${MIX:-}                        # an earlier policy's pairs, for the mixed recipe
COMPARE=${COMPARE:-}                # more reward models to compare (space-separated entries)
mkdir -p "$OUT"
# shellcheck source=benchmarks/lib.sh
source "$(dirname "$0")/lib.sh"

stage prefs "$OUT/prefs-train.jsonl" "$BONSERVE" data prefs --policy "$POLICY" --task arithmetic \
  --split train --n-prompts "$N_PROMPTS" -k 8 --temperature "$TEMPERATURE" --max-tokens 48 --pairs all \
  --enforce-eager --out "$OUT/prefs-train.jsonl"
"$PYTHON" benchmarks/split_prefs.py --pairs "$OUT/prefs-train.jsonl" --validation-prompts "$VALIDATION" \
  --out-dir "$OUT/split" >"$OUT/split.json"
pairs=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["train_pairs"])' "$OUT/split.json")
epoch=$(((pairs + 7) / 8))          # batch 8: one pass over the training pairs
echo "== $pairs training pairs: $epoch steps per reward model"

common=(--data "$OUT/split/train.jsonl" --eval-data "$OUT/split/val.jsonl" --for-policy "$POLICY"
  --max-steps "$epoch" --max-time-s "$RM_BUDGET" --learning-rate 2e-4)
train rm "rm-$TAG-lora" "${common[@]}"
train rm "rm-$TAG-frompolicy" "${common[@]}" --base "$POLICY"
candidates=("rm-$TAG-lora" "rm-$TAG-frompolicy")
if [[ -n $MIX ]]; then
  cat "$OUT/split/train.jsonl" "$MIX" >"$OUT/split/train-mix.jsonl"
  mixed=$(wc -l <"$OUT/split/train-mix.jsonl")
  train rm "rm-$TAG-mix" --data "$OUT/split/train-mix.jsonl" --eval-data "$OUT/split/val.jsonl" \
    --for-policy "$POLICY" --max-steps $(((mixed + 7) / 8)) --max-time-s "$RM_BUDGET" --learning-rate 2e-4
  candidates+=("rm-$TAG-mix")
fi
# shellcheck disable=SC2206
candidates+=($COMPARE)

stage recipes "$OUT/rm_recipes/results.json" "$PYTHON" benchmarks/rm_recipes.py \
  --samples "$OUT/split/val.samples.jsonl" --reward-models "${candidates[@]}" \
  --n 8 --out "$OUT/rm_recipes"
best=$("$PYTHON" - "$OUT/rm_recipes/results.json" <<'PY'
import json, sys
models = json.load(open(sys.argv[1]))["reward_models"]
print(max(models, key=lambda m: (models[m]["gap_captured"], models[m]["pairwise_accuracy"])))
PY
)
echo "== kept reward model: $best"
stage eval "$OUT/eval-bon8.json" "$BONSERVE" eval --model "$POLICY" --task arithmetic --n 8 \
  --temperature "$TEMPERATURE" --max-tokens 48 --reward-model "$best" --no-kl --enforce-eager --record \
  --out "$OUT/eval-bon8.json"
