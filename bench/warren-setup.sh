#!/usr/bin/env bash
# Starts a warren edge and two agents in the background for ../shared/bench/compare.sh:
#   compare.sh --warren-setup "$PWD/bench/warren-setup.sh"
# It exposes 127.0.0.1:$IPERF_PORT and 127.0.0.1:$HTTP_PORT through tcp endpoints (the agent
# link is TLS 1.3 + muxado, as always) and prints tcp=, http= and pids= for compare.sh.
# Also started: a plain http endpoint for $HTTP_PORT, printed as http_endpoint=URL host=NAME,
# which wrk reaches with -H "Host: NAME" (compare.sh's http target must be Host-agnostic).
# And an https endpoint for $HTTP_PORT (TLS terminated at the edge with its local CA's
# certificate), printed as https_endpoint=URL host=NAME:PORT; clients must send NAME as SNI and
# Host (h2load: --connect-to=127.0.0.1:PORT https://NAME:PORT/). logs=DIR is the log folder.
# WARREN_EDGE_ARGS adds flags to the edge's command line (word-split).
# Needs a release build: cargo build --release -p warren
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${WARREN_BIN:-$root/target/release/warren}
[[ -x $bin ]] || { echo "build first: cargo build --release -p warren" >&2; exit 1; }
work=$(mktemp -d)
freeport() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
connect=$(freeport) https=$(freeport) http=$(freeport)
wait_for() { # file pattern
  for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}
"$bin" edge --data-dir "$work/data" --connect-addr 127.0.0.1:$connect --https-addr 127.0.0.1:$https \
  --http-addr 127.0.0.1:$http --api-addr 127.0.0.1:0 --tcp-ports 45000-45999 --log-level warn \
  ${WARREN_EDGE_ARGS:-} >"$work/edge.log" 2>&1 &
edge=$!
started=("$edge")
# On failure, stop what was started (on success the caller stops the printed pids).
trap 'rc=$?; ((rc == 0)) || kill "${started[@]}" 2>/dev/null || true' EXIT
wait_for "$work/edge.log" "authtoken:"
token=$(sed -n 's/^ *authtoken: *//p' "$work/edge.log" | head -1)
ca=$work/data/tls/ca.pem
agent() { # log upstream args...
  local log=$1; shift
  # No inspector: the figures are for the forwarding path (capture is measured separately).
  "$bin" "$@" --authtoken "$token" --connect-url "localhost:$connect" --connect-cas "$ca" --web-addr false >"$log" 2>&1 &
  echo $!
}
a1=$(agent "$work/a1.log" tcp "$IPERF_PORT"); started+=("$a1")
a2=$(agent "$work/a2.log" tcp "$HTTP_PORT"); started+=("$a2")
a3=$(agent "$work/a3.log" http "$HTTP_PORT" --url http://bench.warren.localhost); started+=("$a3")
a4=$(agent "$work/a4.log" http "$HTTP_PORT" --url https://bench-tls.warren.localhost); started+=("$a4")
wait_for "$work/a1.log" Forwarding; wait_for "$work/a2.log" Forwarding; wait_for "$work/a3.log" Forwarding
wait_for "$work/a4.log" Forwarding
t1=$(sed -n 's/^Forwarding tcp:\/\/localhost:\([0-9]*\).*/\1/p' "$work/a1.log")
t2=$(sed -n 's/^Forwarding tcp:\/\/localhost:\([0-9]*\).*/\1/p' "$work/a2.log")
echo "tcp=127.0.0.1:$t1"
echo "http=http://127.0.0.1:$t2/"
echo "http_endpoint=http://127.0.0.1:$http/ host=bench.warren.localhost:$http"
echo "https_endpoint=https://127.0.0.1:$https/ host=bench-tls.warren.localhost:$https"
echo "pids=$edge,$a1,$a2,$a3,$a4"
echo "logs=$work"
