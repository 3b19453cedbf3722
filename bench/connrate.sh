#!/usr/bin/env bash
# New connections per second through a tcp endpoint: wrk against nginx with
# "Connection: close", so every request is a new TCP connection through the tunnel (accept at
# the tunnel's listener, a new stream/data channel to the agent, a new upstream connection).
#
#   bench/connrate.sh [--seconds 5] [--threads 2] [--connections 64]
#
# Systems: direct (wrk -> nginx), rathole (plain TCP transport, configured as
# ../shared/bench/compare.sh does; skipped if not installed) and warren's tcp endpoint
# (bench/warren-setup.sh). Reported: requests/s (= connections/s), p50/p99 latency of a request
# (connect + request + response), and errors: wrk's socket errors (connect/read/write/timeout)
# and non-2xx/3xx responses. nginx runs with one worker, as in compare.sh.
# Needs: target/release/warren, wrk, nginx (installed with apt-get if missing).
set -euo pipefail
SECS=5 THREADS=2 CONNS=64
while (($#)); do
  case $1 in
    --seconds) SECS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
source "$(dirname "$0")/lib.sh"
need_tools wrk nginx
need_warren
raise_nofile 65536 >/dev/null
HTTP_PORT=$(freeport)
start_nginx "$HTTP_PORT"
declare -A URL
order=(direct)
URL[direct]=http://127.0.0.1:$HTTP_PORT/
if have_rathole; then start_rathole "$HTTP_PORT"; URL[rathole]=http://$RH_ADDR/; order+=(rathole); fi
export IPERF_PORT=$HTTP_PORT HTTP_PORT; start_warren
URL[warren]=$W_HTTP; order+=(warren)
sleep 1

CMD="wrk -t$THREADS -c$CONNS -d${SECS}s --latency -H 'Connection: close' URL"
declare -A RPS P50 P99 SOCK NON2XX TOTAL
for s in "${order[@]}"; do
  w=$(wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency -H 'Connection: close' "${URL[$s]}" 2>&1 || true)
  echo "$w" >"$WORK/wrk-$s.txt"
  RPS[$s]=$(awk '/Requests\/sec/{printf "%d", $2}' <<<"$w")
  TOTAL[$s]=$(awk '/requests in/{print $1}' <<<"$w")
  P50[$s]=$(awk '$1=="50%"{print $2}' <<<"$w"); P99[$s]=$(awk '$1=="99%"{print $2}' <<<"$w")
  SOCK[$s]=$(sed -n 's/.*Socket errors: //p' <<<"$w"); SOCK[$s]=${SOCK[$s]:-none}
  NON2XX[$s]=$(awk '/Non-2xx/{print $NF}' <<<"$w"); NON2XX[$s]=${NON2XX[$s]:-0}
  # time for the TIME_WAIT sockets of one run not to weigh on the next
  sleep 1
done
ratio() { python3 -c "a,b='$1','$2';print(round(float(a)/float(b),2) if a and b and float(b)>0 else '-')"; }
echo
echo "new connections per second (one request per connection)"
echo "command: $CMD   (nginx: 1 worker)"
printf '%-8s %10s %8s %9s %9s %9s %8s  %s\n' system conn_per_s /direct p50 p99 requests non2xx socket_errors
for s in "${order[@]}"; do
  printf '%-8s %10s %8s %9s %9s %9s %8s  %s\n' "$s" "${RPS[$s]:--}" "$(ratio "${RPS[$s]:-}" "${RPS[direct]:-}")" \
    "${P50[$s]:--}" "${P99[$s]:--}" "${TOTAL[$s]:--}" "${NON2XX[$s]}" "${SOCK[$s]}"
done
