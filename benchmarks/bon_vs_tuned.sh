#!/usr/bin/env bash
# The comparison report: base + BoN-n against the tuned policies (SFT, DPO, PPO; each also
# with BoN on top), all served by one bonserve on 127.0.0.1 with the reward model of the
# training pipeline, same prompts (the held-out additions) and the same closed-loop arrivals
# for every row.
# Needs the entries of benchmarks/training_pipeline.sh (arith-sft, arith-dpo, arith-ppo, arith-rm).
#
#   bash benchmarks/bon_vs_tuned.sh [OUT_DIR]       # ~30 min on 2 CPU cores with the defaults
set -euo pipefail
source "$(dirname "$0")/serve.sh"
OUT=${1:-docs/benchmarks/bon_vs_tuned}
BONSERVE=${BONSERVE:-.venv/bin/bonserve}
BASE=${BASE:-smollm2-135m-instruct}
REQUESTS=${REQUESTS:-48}
PORT=${PORT:-8011}
mkdir -p "$OUT"
if [[ -e $OUT/report.json ]]; then echo "== $OUT/report.json exists, skipped"; exit 0; fi

cat >"$OUT/matrix.yaml" <<YAML
# base + BoN-n at T=0.8, each tuned policy greedy and with BoN-4/8 on top; base greedy too
models: [$BASE]
best_of: [1, 2, 4, 8, 16]
temperatures: [0.8]
cells:
  - {model: $BASE, best_of: 1, temperature: 0.0}
  - {model: arith-sft, best_of: 1, temperature: 0.0}
  - {model: arith-sft, best_of: 4, temperature: 0.8}
  - {model: arith-sft, best_of: 8, temperature: 0.8}
  - {model: arith-dpo, best_of: 1, temperature: 0.0}
  - {model: arith-dpo, best_of: 4, temperature: 0.8}
  - {model: arith-dpo, best_of: 8, temperature: 0.8}
  - {model: arith-ppo, best_of: 1, temperature: 0.0}
  - {model: arith-ppo, best_of: 4, temperature: 0.8}
  - {model: arith-ppo, best_of: 8, temperature: 0.8}
task: arithmetic
num_requests: $REQUESTS
concurrency: 4
max_tokens: 48
goodput: {e2el: 4000}
YAML

# LoRA rank 16 exactly: vLLM's CPU LoRA kernels get slower with the configured maximum rank.
serve_until_ready "$PORT" "${TMPDIR:-/tmp}/bon_vs_tuned-server.log" \
  --model "$BASE" --reward-model arith-rm --max-loras 3 --max-lora-rank 16 --accelerator-price-per-hour 2.5 --open-admin
"$BONSERVE" loadtest compare --base-url "http://127.0.0.1:$PORT" --matrix "$OUT/matrix.yaml" \
  --load-models --no-progress --out "$OUT"
