#!/usr/bin/env bash
# The RLHF policies trained with the generative verifier as PPO's learned reward, served beside
# the gold-reward PPO policy: each greedy, and the refreshed one also Best-of-8 reranked by its
# own refreshed verifier (written by PPO as NAME-rm). Each LoRA policy is merged first (what a
# deployment serves: a merged checkpoint decodes at the base's speed). One bonserve on
# 127.0.0.1, the same 100 held-out additions and closed-loop arrivals in every row; quality by
# the gold verifier, latency and $/request by the server's cost model. Needs the entries made
# by `RM=verifier-arith-v RUNS_WANTED="frozen-kl-fixed verifier-refresh" bash
# benchmarks/ppo_rm_refresh.sh` (docs/benchmarks/verifier.md) and arith-ppo-merged.
#
#   bash benchmarks/bon_vs_tuned_rlhf_verifier.sh [OUT_DIR]     # ~25 min on 2 CPU cores
set -euo pipefail
source "$(dirname "$0")/serve.sh"
OUT=${1:-docs/benchmarks/bon_vs_tuned_rlhf_verifier}
BONSERVE=${BONSERVE:-.venv/bin/bonserve}
GOLD=${GOLD:-arith-ppo-merged}
FROZEN=${FROZEN:-ppo-verifier-arith-v-frozen-kl-fixed}
REFRESHED=${REFRESHED:-ppo-verifier-arith-v-refresh-kl-fixed}
REQUESTS=${REQUESTS:-100}
PORT=${PORT:-8014}
mkdir -p "$OUT"
if [[ -e $OUT/report.json ]]; then echo "== $OUT/report.json exists, skipped"; exit 0; fi
for name in "$FROZEN" "$REFRESHED"; do
  "$BONSERVE" registry show "$name-merged" >/dev/null 2>&1 || "$BONSERVE" registry merge "$name"
done

cat >"$OUT/matrix.yaml" <<YAML
# greedy rows at T=0; the Best-of-N row at the temperature PPO sampled its rollouts at
models: []
best_of: []
temperatures: []
cells:
  - {model: $GOLD, best_of: 1, temperature: 0.0}
  - {model: $FROZEN-merged, best_of: 1, temperature: 0.0}
  - {model: $REFRESHED-merged, best_of: 1, temperature: 0.0}
  - {model: $REFRESHED-merged, best_of: 8, temperature: 0.7}
task: arithmetic
num_requests: $REQUESTS
concurrency: 4
max_tokens: 48
goodput: {e2el: 4000}
YAML

serve_until_ready "$PORT" "${TMPDIR:-/tmp}/bon_vs_tuned_rlhf_verifier-server.log" \
  --model "$GOLD" --reward-model "$REFRESHED-rm" --reward-models "$REFRESHED-merged=$REFRESHED-rm" \
  --accelerator-price-per-hour 2.5 --open-admin
"$BONSERVE" loadtest compare --base-url "http://127.0.0.1:$PORT" --matrix "$OUT/matrix.yaml" \
  --load-models --no-progress --out "$OUT"
.venv/bin/python benchmarks/paired_rows.py "$OUT/report.json" \
  "$REFRESHED-merged best_of=1 T=0" "$FROZEN-merged best_of=1 T=0" \
  "$REFRESHED-merged best_of=1 T=0" "$GOLD best_of=1 T=0" \
  "$REFRESHED-merged best_of=8 T=0.7" "$REFRESHED-merged best_of=1 T=0" \
  --out "$OUT/paired.json"
