#!/usr/bin/env bash
# RLHF with a learned reward model that is refreshed on the policy's own samples, against the
# same run with the reward model frozen: PPO from the base, --reward rm, the same recipe and the
# same wall-clock budget as the gold-reward run of docs/benchmarks/training.md (1600 s), the
# gold reward logged beside the proxy every iteration; then greedy on the 300 held-out
# additions (accuracy, KL) and a plot of proxy vs gold per iteration.
# Stages whose output exists are skipped, so an interrupted run resumes where it stopped.
#
#   bash benchmarks/ppo_rm_refresh.sh [OUT_DIR]    # ~35 min per run on 2 CPU cores
#   RM=rm-ppo-mix RUNS_WANTED=frozen-kl bash benchmarks/ppo_rm_refresh.sh docs/benchmarks/ppo_rm_onpolicy
set -euo pipefail
OUT=${1:-docs/benchmarks/ppo_rm_refresh}
BONSERVE=${BONSERVE:-.venv/bin/bonserve}
BASE=${BASE:-smollm2-135m-instruct}
RM=${RM:-rm-base-lora}              # trained on the base's own samples (T=0.8), bon_pays.md
BUDGET=${BUDGET:-1600}
RUNS_WANTED=${RUNS_WANTED:-refresh frozen}   # also: rollouts, rollouts-lite, frozen-grouped, frozen-kl, frozen-kl-fixed, batch-kl, rare-kl-fixed, verifier-refresh
REPLAY=${REPLAY:-docs/benchmarks/bon_pays_t04/prefs-base-train.jsonl}  # what RM was trained on
mkdir -p "$OUT"
# shellcheck source=benchmarks/lib.sh
source "$(dirname "$0")/lib.sh"

# The refresh redone: comparisons from PPO's own rollouts (8 prompts x 4 a batch), the reward
# model's original pairs replayed beside them, half of each refresh batch new.
from_rollouts=(--rollouts-per-prompt 4 --rm-refresh-source rollouts --rm-refresh-replay "$REPLAY"
  --rm-refresh-new-share 0.5 --rm-refresh-batch-size 16 --rm-refresh-learning-rate 1e-5)
kl_control=(--kl-coef 0.05 --target-kl 4 --kl-horizon 32)
recipe=(--base "$BASE" --task arithmetic --reward rm --reward-model "$RM" --normalize-scores
  --batch-size 32 --mini-batch-size 8 --num-ppo-epochs 2 --temperature 0.7 --max-new-tokens 32
  --learning-rate 3e-4 --kl-coef 0.02 --max-steps 40 --save-steps 5 --max-time-s "$BUDGET")
for run in $RUNS_WANTED; do
  case $run in
    refresh) name=ppo-rm-refresh; extra=(--rm-refresh-every 3 --rm-refresh-prompts 32 --rm-refresh-k 4
      --rm-refresh-steps 20 --rm-refresh-batch-size 8 --rm-refresh-learning-rate 1e-5) ;;
    frozen) name=ppo-rm-frozen; extra=() ;;
    rollouts) name=ppo-rm-rollouts; extra=("${from_rollouts[@]}" --rm-refresh-every 2 --rm-refresh-steps 30) ;;
    frozen-grouped) name=ppo-rm-frozen-grouped; extra=(--rollouts-per-prompt 4) ;;
    # `rollouts` spent 80% of its budget refreshing: refresh a third as often, for a
    # fifth of its steps, from the comparisons of six iterations.
    rollouts-lite) name=ppo-rm-rollouts-lite; extra=("${from_rollouts[@]}" --rm-refresh-every 6 --rm-refresh-steps 6) ;;
    # A KL control that binds: the coefficient starts at 0.05 and is steered toward 4 nats
    # (the gold-reward run ended at 4.9) over a horizon of one batch, so it can grow 1.2x
    # per iteration. Run with RM=rm-ppo-mix, the reward model that ranks on-policy pairs best.
    frozen-kl) name=ppo-$RM-frozen-kl; extra=("${kl_control[@]}") ;;
    # frozen-kl's coefficient decayed while the KL was under target and the policy hacked the
    # reward for a third of the run before it bound: a fixed coefficient that binds from the start.
    frozen-kl-fixed) name=ppo-$RM-frozen-kl-fixed; extra=(--kl-coef 0.15) ;;
    # Refreshes that see every rollout: pairs across the iteration's batch (any right rollout
    # above any wrong one), one rollout per prompt, with the KL control of frozen-kl. Set
    # REPLAY to the pairs RM was trained on.
    batch-kl) name=ppo-$RM-batch-kl; extra=("${kl_control[@]}" --rm-refresh-source rollouts
      --rm-refresh-pairs batch --rm-refresh-replay "$REPLAY" --rm-refresh-new-share 0.5
      --rm-refresh-batch-size 16 --rm-refresh-learning-rate 2e-5 --rm-refresh-every 4 --rm-refresh-steps 8) ;;
    # batch-kl's refreshes every 4 iterations each re-ranked the rewards (proxy 0.4 -> 3.9 ->
    # 5.2 -> 2.9) and took 17 of 39 iterations' time: three times rarer, three times the steps,
    # with frozen-kl-fixed's KL coefficient, so PPO climbs a fixed reward for 10 iterations.
    rare-kl-fixed) name=ppo-$RM-rare-kl-fixed; extra=(--kl-coef 0.15 --rm-refresh-source rollouts
      --rm-refresh-pairs batch --rm-refresh-replay "$REPLAY" --rm-refresh-new-share 0.5
      --rm-refresh-batch-size 16 --rm-refresh-learning-rate 2e-5 --rm-refresh-every 10 --rm-refresh-steps 24) ;;
    # A generative verifier (RM=verifier-arith-v) refreshed on the worked checks of the
    # rollouts (training/verifier_refresh.py) every 5 iterations, 4 SFT steps of 8 checks, half
    # new and half replayed from its rows (REPLAY=docs/benchmarks/verifier/train.jsonl), with
    # frozen-kl-fixed's KL coefficient: the refreshed counterpart of RM=verifier-arith-v frozen-kl-fixed.
    verifier-refresh) name=ppo-$RM-refresh-kl-fixed; extra=(--kl-coef 0.15 --rm-refresh-source rollouts
      --rm-refresh-pairs batch --rm-refresh-replay "$REPLAY" --rm-refresh-new-share 0.5
      --rm-refresh-batch-size 8 --rm-refresh-learning-rate 1e-5 --rm-refresh-every 5 --rm-refresh-steps 4) ;;
    *) echo "unknown run $run" >&2; exit 2 ;;
  esac
  train ppo "$name" "${recipe[@]}" "${extra[@]}"
  stage "eval-$name" "$OUT/eval-$name.json" "$BONSERVE" eval --model "$name" --task arithmetic \
    --out "$OUT/eval-$name.json"
done
.venv/bin/python benchmarks/plot_ppo_log.py --out "$OUT/proxy_vs_gold.png" "$OUT"/*.ppo_log.jsonl
