#!/usr/bin/env bash
# Best-of-N reranked by the generative verifier, through the server, beside each policy's
# greedy answer: the base (BoN-8 at T=0.4) and the gold-reward PPO policy (BoN-8 at T=0.7, the
# temperature it was trained and evaluated at). One bonserve on 127.0.0.1 with the verifier
# as every policy's reranker, the same 100 held-out additions and closed-loop arrivals in
# every row; quality by the gold verifier, latency and $/request by the server's cost model.
# Needs the registry entries verifier-arith-v and arith-ppo-merged (docs/benchmarks/verifier.md,
# bon_pays_ppo.md).
#
#   bash benchmarks/bon_vs_tuned_verifier.sh [OUT_DIR]     # ~20 min on 2 CPU cores
set -euo pipefail
source "$(dirname "$0")/serve.sh"
OUT=${1:-docs/benchmarks/bon_vs_tuned_verifier}
BONSERVE=${BONSERVE:-.venv/bin/bonserve}
BASE=${BASE:-smollm2-135m-instruct}
POLICY=${POLICY:-arith-ppo-merged}
VERIFIER=${VERIFIER:-verifier-arith-v}
REQUESTS=${REQUESTS:-100}
PORT=${PORT:-8013}
mkdir -p "$OUT"
if [[ -e $OUT/report.json ]]; then echo "== $OUT/report.json exists, skipped"; exit 0; fi

cat >"$OUT/matrix.yaml" <<YAML
# greedy rows at T=0; Best-of-N rows at the temperature each policy samples at
models: []
best_of: []
temperatures: []
cells:
  - {model: $BASE, best_of: 1, temperature: 0.0}
  - {model: $BASE, best_of: 8, temperature: 0.4}
  - {model: $POLICY, best_of: 1, temperature: 0.0}
  - {model: $POLICY, best_of: 8, temperature: 0.7}
task: arithmetic
num_requests: $REQUESTS
concurrency: 4
max_tokens: 48
goodput: {e2el: 4000}
YAML

serve_until_ready "$PORT" "${TMPDIR:-/tmp}/bon_vs_tuned_verifier-server.log" \
  --model "$BASE" --reward-model "$VERIFIER" --reward-models "$BASE=$VERIFIER,$POLICY=$VERIFIER" \
  --accelerator-price-per-hour 2.5 --open-admin
"$BONSERVE" loadtest compare --base-url "http://127.0.0.1:$PORT" --matrix "$OUT/matrix.yaml" \
  --load-models --no-progress --out "$OUT"
.venv/bin/python benchmarks/paired_rows.py "$OUT/report.json" \
  "$POLICY best_of=8 T=0.7" "$POLICY best_of=1 T=0" \
  "$BASE best_of=8 T=0.4" "$BASE best_of=1 T=0" \
  --out "$OUT/paired.json"
