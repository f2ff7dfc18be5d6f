#!/usr/bin/env bash
# The Best-of-N-vs-tuned comparison re-run with on-policy reward models: base + BoN-8 at
# T=0.4 reranked by the reward model trained on the base's own T=0.4 samples, beside the
# policies trained this wave (BoN-distilled, DPO+RPO on on-policy pairs, SFT v2, PPO with a
# frozen / a refreshed learned reward model, the refreshed one also with BoN-8 under its own
# refreshed reward model). One bonserve on 127.0.0.1, same held-out prompts and closed-loop
# arrivals in every row, 100 measured requests a row (a row's 95% interval is about +-0.1).
# Needs the registry entries named below (docs/benchmarks/bon_pays_t04.md, dpo_recipes.md,
# ppo_rm_refresh.md say how each was made).
#
#   bash benchmarks/bon_vs_tuned_refreshed.sh [OUT_DIR]     # ~50 min on 2 CPU cores
set -euo pipefail
source "$(dirname "$0")/serve.sh"
OUT=${1:-docs/benchmarks/bon_vs_tuned_refreshed}
BONSERVE=${BONSERVE:-.venv/bin/bonserve}
BASE=${BASE:-smollm2-135m-instruct}
REQUESTS=${REQUESTS:-100}
PORT=${PORT:-8012}
mkdir -p "$OUT"
if [[ -e $OUT/report.json ]]; then echo "== $OUT/report.json exists, skipped"; exit 0; fi

cat >"$OUT/matrix.yaml" <<YAML
# greedy rows at T=0; sampled rows at the temperature their reward model was trained for
models: []
best_of: []
temperatures: []
cells:
  - {model: $BASE, best_of: 1, temperature: 0.0}
  - {model: $BASE, best_of: 1, temperature: 0.4}
  - {model: $BASE, best_of: 8, temperature: 0.4}
  - {model: base-bon8-distilled-merged, best_of: 1, temperature: 0.0}
  - {model: dpo-op-rpo, best_of: 1, temperature: 0.0}
  - {model: arith-sft-v2, best_of: 1, temperature: 0.0}
  - {model: ppo-rm-frozen, best_of: 1, temperature: 0.0}
  - {model: ppo-rm-refresh, best_of: 1, temperature: 0.0}
  - {model: ppo-rm-refresh, best_of: 8, temperature: 0.7}
task: arithmetic
num_requests: $REQUESTS
concurrency: 4
max_tokens: 48
goodput: {e2el: 4000}
YAML

# Each policy's reward model pinned (the base has several whose manifests name it).
serve_until_ready "$PORT" "${TMPDIR:-/tmp}/bon_vs_tuned_refreshed-server.log" \
  --model "$BASE" --reward-model rm-base-t04-long \
  --reward-models "$BASE=rm-base-t04-long,ppo-rm-refresh=ppo-rm-refresh-rm" --max-loras 4 \
  --max-lora-rank 16 --accelerator-price-per-hour 2.5 --open-admin
"$BONSERVE" loadtest compare --base-url "http://127.0.0.1:$PORT" --matrix "$OUT/matrix.yaml" \
  --load-models --no-progress --out "$OUT"
