#!/usr/bin/env bash
# The cost of traffic events: warren's plain http endpoint measured with wrk with no event
# subscription, then with one that takes every request (http_request_complete.v0) to a file
# destination, alternating, on one edge.
#
#   bench/events.sh [--seconds 5] [--rounds 5]
#
# Each round runs, for --seconds each:
#   off:  wrk -t2 -c64 -d<s>s -H "Host: NAME" http://127.0.0.1:PORT/   (no subscription)
#   on:   the same, with a subscription of every request to a file destination
# and prints requests/s for both and their ratio; the summary line gives the medians.
# Needs: target/release/warren, wrk, nginx (installed with apt-get if missing).
set -euo pipefail
SECS=5 ROUNDS=5
while (($#)); do
  case $1 in
    --seconds) SECS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
source "$(dirname "$0")/lib.sh"
need_tools wrk nginx
need_warren
raise_nofile 65536 >/dev/null
HTTP_PORT=$(freeport)
start_nginx "$HTTP_PORT"
export IPERF_PORT=$HTTP_PORT HTTP_PORT; start_warren
api=$(sed -n 's/.*REST API: *\([^ ]*\).*/\1/p' "$W_LOGS/edge.log" | head -1)
key=$(sed -n 's/^ *api_key: *//p; s/.*API key: *//p' "$W_LOGS/edge.log" | head -1)
[[ -n $api && -n $key ]] || { echo "no REST API or API key in $W_LOGS/edge.log" >&2; exit 1; }
call() { # method path [json]
  curl -sf -X "$1" "$api$2" -H "Authorization: Bearer $key" -H "Ngrok-Version: 2" \
    -H "Content-Type: application/json" ${3:+--data "$3"}
}
dest=$(call POST /event_destinations '{"target": {"file": {"name": "bench.jsonl", "max_bytes": 1073741824, "max_files": 1}}}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
host=${W_HTTP_HOST%:*} port=${W_HTTP_HOST##*:}
rps() {
  wrk_rps -t2 -c64 -d"${SECS}s" -H "Host: $host:$port" "http://127.0.0.1:$port/"
}
offs=() ons=()
for r in $(seq 1 "$ROUNDS"); do
  off=$(rps)
  sub=$(call POST /event_subscriptions "{\"sources\": [{\"type\": \"http_request_complete.v0\"}], \"destination_ids\": [\"$dest\"]}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  sleep 6 # other nodes' caches of subscriptions live 5 s; this node's is dropped at once
  on=$(rps)
  call DELETE "/event_subscriptions/$sub" >/dev/null
  sleep 6
  offs+=("$off") ons+=("$on")
  printf 'round %d: off %s req/s, on %s req/s, on/off %.3f\n' "$r" "$off" "$on" "$(python3 -c "print($on/$off)")"
done
median_ratio off on "${offs[*]}" "${ons[*]}" "(target: cost <= 5 %)"
lines=$(wc -l <"$W_LOGS/data/events/bench.jsonl" 2>/dev/null || echo 0)
echo "events written to the file: $lines"
