#!/usr/bin/env bash
# The cost of relaying between cluster nodes: two edge nodes on one PostgreSQL database
# (docs/CLUSTER.md), one agent on node A exposing nginx (a plain-http endpoint) and an iperf3
# server (a tcp endpoint). Each measurement runs against node A (the local route) and node B
# (relayed to node A over their relay link), for --seconds each:
#   http:  wrk -t2 -c64 -d<seconds>s --latency -H "Host: NAME" http://127.0.0.1:PORT/
#   tcp:   iperf3 -c 127.0.0.1 -p PORT -t <seconds>      (one stream; node B's port on 127.0.0.2)
#   latency: wrk -t1 -c1 -d<seconds>s --latency (one request at a time), --rounds times,
#            alternating local and relayed: a relayed request's latency against the local
#            route's (issue #22's target: relayed p50 <= 1.5x local)
# Reported: requests/s and p50/p99, Gbit/s, and relayed / local; the latency rounds' medians.
#
#   bench/cluster.sh [--seconds 5] [--rounds 5] [--database postgres://postgres@127.0.0.1:5432/test]
#
# The database URL names a server where the user may create databases; a fresh one is made
# and dropped. Needs: target/release/warren, psql, nginx, wrk, iperf3 (installed if missing).
set -euo pipefail
SECS=5 ROUNDS=5 DB=${WARREN_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
while (($#)); do
  case $1 in
    --seconds) SECS=$2; shift 2 ;;
    --database) DB=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
source "$(dirname "$0")/lib.sh"
need_tools nginx wrk iperf3 psql
need_warren
raise_nofile 65536 >/dev/null

name=warren_bench_$$
psql -q "$DB" -c "CREATE DATABASE $name" >/dev/null
on_exit "psql -q '$DB' -c 'DROP DATABASE $name WITH (FORCE)' >/dev/null"
url=${DB%/*}/$name

HTTP_PORT=$(freeport) IPERF_PORT=$(freeport)
start_nginx "$HTTP_PORT"
iperf3 -s -p "$IPERF_PORT" >/dev/null 2>&1 & track $!

node() { # name log extra-args...
  local n=$1 log=$2; shift 2
  "$WARREN" edge --data-dir "$WORK/$n" --database-url "$url" --connect-addr 127.0.0.1:0 \
    --https-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --api-addr 127.0.0.1:0 \
    --cluster-addr 127.0.0.1:0 --log-level warn "$@" >"$log" 2>&1 &
  track $!
}
node a "$WORK/a.log" --tcp-ports 46000-46099
wait_for "$WORK/a.log" "authtoken:"
token=$(sed -n 's/^ *authtoken: *//p' "$WORK/a.log" | head -1)
a_connect=$(sed -n 's/^ *agents connect: *\([^ ]*\).*/\1/p' "$WORK/a.log")
node b "$WORK/b.log" --tcp-ports 46100-46199 --tcp-bind-ip 127.0.0.2 --master-key-file "$WORK/a/master.key"
wait_for "$WORK/b.log" "agents connect:"
agent() { # log args...
  local log=$1; shift
  "$WARREN" "$@" --authtoken "$token" --connect-url "$a_connect" --connect-cas "$WORK/a/tls/ca.pem" \
    --web-addr false >"$log" 2>&1 &
  track $!
}
agent "$WORK/http.log" http "$HTTP_PORT" --url http://bench.warren.localhost
agent "$WORK/tcp.log" tcp "$IPERF_PORT"
wait_for "$WORK/http.log" Forwarding
wait_for "$WORK/tcp.log" Forwarding
tcp_port=$(sed -n 's/^Forwarding tcp:\/\/localhost:\([0-9]*\).*/\1/p' "$WORK/tcp.log")
http_port=$(sed -n 's/^Forwarding http:\/\/bench\.warren\.localhost:\([0-9]*\).*/\1/p' "$WORK/http.log")
b_http=$(sed -n 's/^ *http endpoints: *http:\/\/<name>\.[^:]*:\([0-9]*\).*/\1/p' "$WORK/b.log")
[[ -n $b_http ]] || { echo "node B printed no http port:" >&2; cat "$WORK/b.log" >&2; exit 1; }
wait_port 127.0.0.2 "$tcp_port"
# Node B's view follows within a second of the bind; wait until it serves the name.
for _ in $(seq 1 100); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: bench.warren.localhost" "http://127.0.0.1:$b_http/" || true)
  [[ $code == 200 ]] && break
  sleep 0.1
done

wrk_run() { # port -> "rps p50 p99"
  local out
  out=$(wrk -t2 -c64 -d"${SECS}s" --latency -H "Host: bench.warren.localhost" "http://127.0.0.1:$1/" 2>&1 || true)
  echo "$(sed -n 's/^Requests\/sec: *\([0-9]*\).*/\1/p' <<<"$out") $(awk '$1=="50%"{print $2}' <<<"$out") $(awk '$1=="99%"{print $2}' <<<"$out")"
}
iperf_run() { # host port -> Gbit/s received
  iperf3 -c "$1" -p "$2" -t "$SECS" -J 2>/dev/null |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'
}
read -r l_rps l_p50 l_p99 <<<"$(wrk_run "$http_port")"
read -r r_rps r_p50 r_p99 <<<"$(wrk_run "$b_http")"
l_gbit=$(iperf_run 127.0.0.1 "$tcp_port")
r_gbit=$(iperf_run 127.0.0.2 "$tcp_port")
ratio() { python3 -c "a,b=float('$1' or 0),float('$2' or 0); print(f'{b/a:.2f}' if a else '-')"; }
echo
echo "cluster relay: agent on node A; visitors on node A (local) and node B (relayed)"
echo "http: wrk -t2 -c64 -d${SECS}s --latency -H 'Host: bench.warren.localhost' http://127.0.0.1:PORT/"
echo "tcp:  iperf3 -c HOST -p $tcp_port -t $SECS"
printf '%-8s %10s %9s %9s %8s\n' route req_per_s p50 p99 Gbit/s
printf '%-8s %10s %9s %9s %8s\n' local "$l_rps" "$l_p50" "$l_p99" "$l_gbit"
printf '%-8s %10s %9s %9s %8s\n' relayed "$r_rps" "$r_p50" "$r_p99" "$r_gbit"
echo "relayed/local: requests $(ratio "$l_rps" "$r_rps"), Gbit/s $(ratio "$l_gbit" "$r_gbit")"

lat_run() { # port -> "p50 p99" in ms
  wrk -t1 -c1 -d"${SECS}s" --latency -H "Host: bench.warren.localhost" "http://127.0.0.1:$1/" 2>&1 |
    awk 'function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; return v * 1000 }
         $1=="50%"{a=ms($2)} $1=="99%"{b=ms($2)} END{printf "%.3f %.3f\n", a, b}'
}
echo
echo "latency, one request at a time: wrk -t1 -c1 -d${SECS}s --latency -H 'Host: bench.warren.localhost' http://127.0.0.1:PORT/"
lp50=() rp50=() lp99=() rp99=()
for r in $(seq 1 "$ROUNDS"); do
  read -r a b <<<"$(lat_run "$http_port")"; read -r c d <<<"$(lat_run "$b_http")"
  lp50+=("$a") lp99+=("$b") rp50+=("$c") rp99+=("$d")
  echo "round $r: local p50 ${a} ms p99 ${b} ms; relayed p50 ${c} ms p99 ${d} ms; relayed/local p50 $(ratio "$a" "$c")"
done
python3 - "${lp50[*]}" "${rp50[*]}" "${lp99[*]}" "${rp99[*]}" <<'EOF'
import statistics, sys
l50, r50, l99, r99 = ([float(x) for x in a.split()] for a in sys.argv[1:5])
m = statistics.median
print(f"median: local p50 {m(l50):.3f} ms, relayed p50 {m(r50):.3f} ms, relayed/local {m(r50)/m(l50):.2f} "
      f"(target <= 1.5); p99 {m(l99):.3f} vs {m(r99):.3f} ms")
EOF
