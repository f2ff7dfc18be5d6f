# Shared by the evidence pipelines (training_pipeline.sh, online_rl.sh): resumable stages and
# registry-aware training. Expects OUT (output dir) and BONSERVE (the CLI) to be set.
RUNS=${BONSERVE_HOME:-$HOME/.cache/bonserve}/runs

stage() {  # stage NAME OUTPUT CMD...: run CMD unless OUTPUT exists; log its wall time
  local name=$1 output=$2; shift 2
  if [[ -e $output ]]; then echo "== $name: $output exists, skipped"; return; fi
  echo "== $name: $*"
  local t0=$SECONDS
  "$@"
  echo "$name $((SECONDS - t0))" >>"$OUT/wall_seconds.txt"
}

entry_exists() { "$BONSERVE" registry show "$1" >/dev/null 2>&1; }

train() {  # train KIND NAME ARGS...: skip when the registry entry exists; keep manifest and logs
  local kind=$1 name=$2; shift 2
  if entry_exists "$name"; then
    echo "== train $kind: entry $name exists, skipped"
  else
    stage "train-$kind-$name" /nonexistent "$BONSERVE" train "$kind" --name "$name" "$@"
  fi
  "$BONSERVE" registry show "$name" >"$OUT/$name.manifest.json"
  local state
  state=$(ls -d "$RUNS/$name"/checkpoint-* 2>/dev/null | sort -V | tail -1 || true)
  if [[ -n $state && -f $state/trainer_state.json ]]; then cp "$state/trainer_state.json" "$OUT/$name.trainer_state.json"; fi
  if [[ -f $RUNS/$name/ppo_log.jsonl ]]; then cp "$RUNS/$name/ppo_log.jsonl" "$OUT/$name.ppo_log.jsonl"; fi
  return 0
}
