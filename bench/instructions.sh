#!/usr/bin/env bash
# Instructions the edge executes per proxied request, counted by valgrind's callgrind.
#
#   bench/instructions.sh [--requests 20000] [--events]
#
# Unlike the wall-clock figures, which move by ±15 % on a shared 2-core machine, the count is
# repeatable: the same binary gave 939.0 and 939.5 million instructions for the same 20,000
# requests. So it can tell two builds apart where req/s cannot. It counts user-space work only
# (the kernel's share of a request is in bench/syscalls.sh).
#
# The edge runs under callgrind (about 50 times slower); the agents and nginx run normally.
# h2load --h1 -c8 sends 2,000 requests to warm up, then the counters are zeroed, N requests are
# sent and the counters dumped: first through the tcp endpoint, then through the plain http
# endpoint (Host routed at the edge). Reported: instructions per request over all the edge's
# threads. With --events, the http endpoint is counted once more with a subscription that
# takes every request's http_request_complete.v0 to a file destination (issue #18's case): the
# difference is what a traffic event costs, delivery to the file included. The dumps are kept in bench/results/ for callgrind_annotate (not tracked).
# Needs: valgrind, h2load (nghttp2-client), nginx, target/release/warren.
set -euo pipefail
N=20000 EVENTS=0
while (($#)); do
  case $1 in
    --requests) N=$2; shift 2 ;;
    --events) EVENTS=1; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
source "$(dirname "$0")/lib.sh"
need_tools valgrind h2load nginx
need_warren
HTTP_PORT=$(freeport)
start_nginx "$HTTP_PORT"
# warren-setup.sh starts every process with $WARREN_BIN: only the edge goes under callgrind.
cat >"$WORK/warren" <<EOF
#!/usr/bin/env bash
if [[ \$1 == edge ]]; then
  exec valgrind --tool=callgrind --callgrind-out-file="$WORK/edge.cg" "$WARREN" "\$@"
fi
exec "$WARREN" "\$@"
EOF
chmod +x "$WORK/warren"
export IPERF_PORT=$HTTP_PORT HTTP_PORT
WARREN_BIN=$WORK/warren start_warren
edge=${W_PIDS[0]}
mkdir -p "$ROOT/bench/results"
stamp=$(date +%Y%m%d-%H%M%S)
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)

count() { # name h2load-args...
  local name=$1; shift
  h2load --h1 -n 2000 -c 8 "$@" >/dev/null
  callgrind_control -z "$edge" >/dev/null 2>&1
  local out
  out=$(h2load --h1 -n "$N" -c 8 "$@")
  callgrind_control -d "$edge" >/dev/null 2>&1
  local ok
  ok=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' <<<"$out")
  [[ $ok == "$N" ]] || { echo "$name: only ${ok:-0} of $N requests got 2xx" >&2; echo "$out" >&2; exit 1; }
  local dump
  for _ in $(seq 1 100); do
    dump=$(ls -t "$WORK"/edge.cg.* 2>/dev/null | head -1)
    [[ -n $dump ]] && [[ $dump != "${last:-}" ]] && grep -q '^totals:' "$dump" 2>/dev/null && break
    sleep 0.1
  done
  last=$dump
  local total
  total=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$dump")
  cp "$dump" "$ROOT/bench/results/callgrind-$stamp-$commit-$name.out"
  printf '%-14s %12s %10s   %s\n' "$name" "$total" "$((total / N))" "bench/results/callgrind-$stamp-$commit-$name.out"
}

echo "edge instructions per request (callgrind; h2load --h1 -n $N -c 8; commit $commit)"
printf '%-14s %12s %10s   %s\n' endpoint instructions per_req dump
count tcp "$W_HTTP"
host=${W_HTTP_HOST} addr=${W_HTTP_ENDPOINT#http://}
count http "--connect-to=${addr%/}" "http://$host/"
if ((EVENTS)); then
  api=$(sed -n 's/.*REST API: *\([^ ]*\).*/\1/p' "$W_LOGS/edge.log" | head -1)
  key=$(sed -n 's/^ *api_key: *//p; s/.*API key: *//p' "$W_LOGS/edge.log" | head -1)
  call() { curl -sf -X "$1" "$api$2" -H "Authorization: Bearer $key" -H "Ngrok-Version: 2" \
    -H "Content-Type: application/json" ${3:+--data "$3"}; }
  dest=$(call POST /event_destinations '{"target": {"file": {"name": "bench.jsonl", "max_bytes": 1073741824, "max_files": 1}}}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  call POST /event_subscriptions "{\"sources\": [{\"type\": \"http_request_complete.v0\"}], \"destination_ids\": [\"$dest\"]}" >/dev/null
  count http+events "--connect-to=${addr%/}" "http://$host/"
fi
