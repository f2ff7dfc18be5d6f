#!/usr/bin/env bash
# DPO variants on the same data budget (60 steps x 8 pairs, LoRA r16 all-linear), each
# evaluated greedy on the 300 held-out additions with its KL from the base: the data (the
# base's T=0.8 pairs vs its on-policy T=0.4 pairs, every correct/wrong combination), beta,
# the loss (sigmoid, IPO) and RPO's NLL term on the chosen replies (--rpo-alpha).
# Stages whose output exists are skipped, so an interrupted run resumes where it stopped.
#
#   bash benchmarks/dpo_recipes.sh [OUT_DIR]      # ~15 min per variant on 2 CPU cores
set -euo pipefail
OUT=${1:-docs/benchmarks/dpo_recipes}
BONSERVE=${BONSERVE:-.venv/bin/bonserve}
BASE=${BASE:-smollm2-135m-instruct}
STEPS=${STEPS:-60}
OLD=${OLD:-docs/benchmarks/training/prefs-base.jsonl}              # base, T=0.8, one pair per prompt
ONPOLICY=${ONPOLICY:-docs/benchmarks/bon_pays_t04/prefs-base-train.jsonl}  # base, T=0.4, all pairs
VARIANTS=${VARIANTS:-op-sigmoid op-rpo op-ipo op-beta03}
mkdir -p "$OUT"
# shellcheck source=benchmarks/lib.sh
source "$(dirname "$0")/lib.sh"

for v in $VARIANTS; do
  case $v in
    t08-sigmoid) data=$OLD; args=() ;;                               # the first wave's run
    op-sigmoid) data=$ONPOLICY; args=() ;;                           # on-policy pairs only
    op-rpo) data=$ONPOLICY; args=(--rpo-alpha 1.0) ;;                # + NLL on the chosen
    op-ipo) data=$ONPOLICY; args=(--loss-type ipo --beta 0.1) ;;
    op-beta03) data=$ONPOLICY; args=(--beta 0.3) ;;
    *) echo "unknown variant $v" >&2; exit 2 ;;
  esac
  train dpo "dpo-$v" --data "$data" --base "$BASE" --max-steps "$STEPS" --max-time-s 1800 "${args[@]}"
  stage "eval-$v" "$OUT/eval-dpo-$v.json" "$BONSERVE" eval --model "dpo-$v" --task arithmetic \
    --out "$OUT/eval-dpo-$v.json"
done
