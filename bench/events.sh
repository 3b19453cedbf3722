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
# and prints requests/s for both and their ratio, the edge's CPU time (user + system) per
# request in each, and the whole machine's (every process, and the kernel's own threads such as
# the page cache's writeback of the file): the wall-clock ratio moves with whatever else the two
# CPUs run, the edge's own CPU per request much less. The summary lines give the medians.
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
warren_api
dest=$(traffic_file_destination)
host=${W_HTTP_HOST%:*} port=${W_HTTP_HOST##*:}
edge=${W_PIDS[0]}
tck=$(getconf CLK_TCK)
# busy_ticks: the whole machine's busy CPU time so far (all CPUs, every process and the kernel's
# own threads, such as the page cache's writeback), in clock ticks
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
# rps: requests/s, and in $WORK/cpu the edge's CPU microseconds per request meanwhile (user +
# system), in $WORK/sys the system part, in $WORK/all the whole machine's
rps() {
  local t0 t1 b0 b1 r
  t0=($(cpu_ticks "$edge")) b0=$(busy_ticks)
  r=$(wrk_rps -t2 -c64 -d"${SECS}s" -H "Host: $host:$port" "http://127.0.0.1:$port/")
  t1=($(cpu_ticks "$edge")) b1=$(busy_ticks)
  python3 -c "print(round(($((t1[0] + t1[1] - t0[0] - t0[1]))) / $tck * 1e6 / ($r * $SECS), 2))" >"$WORK/cpu"
  python3 -c "print(round(($((t1[1] - t0[1]))) / $tck * 1e6 / ($r * $SECS), 2))" >"$WORK/sys"
  python3 -c "print(round(($((b1 - b0))) / $tck * 1e6 / ($r * $SECS), 2))" >"$WORK/all"
  echo "$r"
}
offs=() ons=() cpu_offs=() cpu_ons=() all_offs=() all_ons=()
for r in $(seq 1 "$ROUNDS"); do
  off=$(rps)
  cpu_off=$(cat "$WORK/cpu") sys_off=$(cat "$WORK/sys") all_off=$(cat "$WORK/all")
  sub=$(subscribe_every_request "$dest")
  sleep 6 # other nodes' caches of subscriptions live 5 s; this node's is dropped at once
  on=$(rps)
  cpu_on=$(cat "$WORK/cpu") sys_on=$(cat "$WORK/sys") all_on=$(cat "$WORK/all")
  call DELETE "/event_subscriptions/$sub" >/dev/null
  sleep 6
  offs+=("$off") ons+=("$on") cpu_offs+=("$cpu_off") cpu_ons+=("$cpu_on") all_offs+=("$all_off") all_ons+=("$all_on")
  printf 'round %d: off %s req/s, on %s req/s, on/off %.3f; edge CPU per request: off %s us (system %s), on %s us (system %s); machine: off %s us, on %s us\n' \
    "$r" "$off" "$on" "$(python3 -c "print($on/$off)")" "$cpu_off" "$sys_off" "$cpu_on" "$sys_on" "$all_off" "$all_on"
done
median_ratio off on "${offs[*]}" "${ons[*]}" "(target: cost <= 5 %)"
python3 - "${cpu_offs[*]}" "${cpu_ons[*]}" "${all_offs[*]}" "${all_ons[*]}" <<'EOF'
import statistics, sys
off, on, all_off, all_on = (statistics.median(float(x) for x in a.split()) for a in sys.argv[1:5])
print(f"median edge CPU per request: off {off:.2f} us, on {on:.2f} us (+{on - off:.2f} us, {100 * (on / off - 1):.1f} % more)")
print(f"median machine CPU per request (every process and the kernel): off {all_off:.2f} us, on {all_on:.2f} us (+{all_on - all_off:.2f} us, {100 * (all_on / all_off - 1):.1f} % more)")
EOF
traffic_events_written
