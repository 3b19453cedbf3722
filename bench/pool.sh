#!/usr/bin/env bash
# A pooled endpoint with two agents against one agent (issue #22, target 3: >= 1.6x on a
# CPU-bound upstream). Each agent forwards to its own upstream, a Python HTTP server that
# spends --work-ms of CPU on every request (one core at most: the GIL), so one agent's
# endpoint is limited by its upstream, and a pool of two should serve nearly twice as much.
#
#   bench/pool.sh [--seconds 5] [--rounds 3] [--work-ms 2]
#
# Each round: wrk -t2 -c32 -d<s>s against the plain-http endpoint served by agent A alone,
# then by agents A and B pooled (--pooling-enabled on one URL); B leaves after the round.
# Reported: requests/s of each and the ratio; the summary gives the medians.
# Needs: target/release/warren, wrk, python3.
set -euo pipefail
SECS=5 ROUNDS=3 WORK_MS=2
while (($#)); do
  case $1 in
    --seconds) SECS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --work-ms) WORK_MS=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
source "$(dirname "$0")/lib.sh"
need_tools wrk nginx
need_warren
raise_nofile 65536 >/dev/null
cat >"$WORK/busy.py" <<'EOF'
# busy.py PORT WORK_MS: answers every GET after WORK_MS of CPU (keep-alive, threaded; the GIL
# keeps it to one core).
import http.server, sys, time
work = float(sys.argv[2]) / 1000
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        end = time.process_time() + work
        n = 0
        while time.process_time() < end:
            n += 1
        body = b"done\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer.request_queue_size = 1024
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
UP_A=$(freeport) UP_B=$(freeport)
python3 "$WORK/busy.py" "$UP_A" "$WORK_MS" & track $!
python3 "$WORK/busy.py" "$UP_B" "$WORK_MS" & track $!
wait_port 127.0.0.1 "$UP_A"; wait_port 127.0.0.1 "$UP_B"
# The edge (and its own bench agents, which stay idle) from warren-setup.sh.
NGINX_PORT=$(freeport); start_nginx "$NGINX_PORT"
export IPERF_PORT=$NGINX_PORT HTTP_PORT=$NGINX_PORT; start_warren
token=$(sed -n 's/^ *authtoken: *//p' "$W_LOGS/edge.log" | head -1)
connect=$(sed -n 's/^ *agents connect: *\([^ ]*\).*/\1/p' "$W_LOGS/edge.log" | head -1)
port=${W_HTTP_HOST##*:}
agent() { # log upstream-port
  "$WARREN" http "$2" --url http://pool.warren.localhost --pooling-enabled --authtoken "$token" \
    --connect-url "$connect" --connect-cas "$W_LOGS/data/tls/ca.pem" --web-addr false >"$1" 2>&1 &
  echo $!
}
a=$(agent "$WORK/a.log" "$UP_A"); track "$a"
wait_for "$WORK/a.log" Forwarding
rps() {
  wrk_rps -t2 -c32 -d"${SECS}s" -H "Host: pool.warren.localhost:$port" "http://127.0.0.1:$port/"
}
echo "command: wrk -t2 -c32 -d${SECS}s -H 'Host: pool.warren.localhost:$port' http://127.0.0.1:$port/; upstreams spend ${WORK_MS} ms of CPU per request"
ones=() twos=()
for r in $(seq 1 "$ROUNDS"); do
  one=$(rps)
  b=$(agent "$WORK/b-$r.log" "$UP_B"); track "$b"
  wait_for "$WORK/b-$r.log" Forwarding
  two=$(rps)
  stop "$b"
  # the edge forgets B's session when its connection closes; give it a moment before the
  # next round measures agent A alone
  sleep 1
  ones+=("$one") twos+=("$two")
  printf 'round %d: one agent %s req/s, two pooled %s req/s, two/one %.2f\n' "$r" "$one" "$two" \
    "$(python3 -c "print($two/$one)")"
done
median_ratio "one agent" "two pooled" "${ones[*]}" "${twos[*]}" "(target: two/one >= 1.6)"
