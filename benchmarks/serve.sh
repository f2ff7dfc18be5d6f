# Sourced by the comparison scripts: start one `bonserve serve` in the background, stop it when
# the script exits, and wait until it answers /ready (or fail with its log's tail).
#
#   source benchmarks/serve.sh; serve_until_ready PORT LOG [serve flags...]
serve_until_ready() {
  local port=$1 log=$2
  shift 2
  "$BONSERVE" serve --port "$port" "$@" >"$log" 2>&1 &
  SERVER=$!
  trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
  for _ in $(seq 600); do
    if curl -sf "http://127.0.0.1:$port/ready" >/dev/null; then return 0; fi
    if ! kill -0 "$SERVER" 2>/dev/null; then tail -30 "$log"; exit 1; fi
    sleep 1
  done
  echo "== the server on port $port was not ready after 600 s (log: $log)"
  exit 1
}
