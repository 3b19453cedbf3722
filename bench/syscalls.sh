#!/usr/bin/env bash
# System calls per request in each warren process: perf stat counts the syscalls:sys_enter_*
# tracepoints of the edge and of one agent while wrk drives requests through it.
#
#   bench/syscalls.sh [--seconds 5] [--endpoint tcp|http|rathole] [--events]
#
# tcp: wrk -t2 -c64 through the tcp endpoint (agent: the one for nginx's tcp endpoint);
# rathole: the same through rathole (plain TCP transport, as compare.sh), its server in the
# edge's column and its client in the agent's: the yardstick of issue #22's target 1;
# http: the same through the plain http endpoint (Host routed at the edge); with --events, with a
# subscription of every request's http_request_complete.v0 to a file destination (issue #18's
# case; the file's writes are the edge's own). Reported: calls per
# request (calls / requests wrk completed) for each counted syscall, edge and agent side by side,
# and the CPU time each process spent per request, in user space and in the kernel, in µs
# (from /proc/PID/stat; the counting tracepoints add a little to the kernel's share).
# What the numbers mean: on the visitor side one recvfrom and one sendto per request are the
# floor; writev/recvfrom on the agent session are shared by every stream whose frames left or
# arrived together; futex is a worker thread being woken.
# Needs: root, perf (Debian linux-perf), wrk, nginx, target/release/warren.
set -euo pipefail
SECS=5 EP=tcp EVENTS=0
while (($#)); do
  case $1 in
    --events) EVENTS=1; shift ;;
    --seconds) SECS=$2; shift 2 ;;
    --endpoint) EP=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
source "$(dirname "$0")/lib.sh"
need_tools wrk nginx perf
need_warren
HTTP_PORT=$(freeport)
start_nginx "$HTTP_PORT"
# W_PIDS: edge, agent(tcp iperf), agent(tcp http), agent(http endpoint), agent(https endpoint)
case $EP in
  tcp|http) export IPERF_PORT=$HTTP_PORT HTTP_PORT; start_warren; edge=${W_PIDS[0]} ;;&
  tcp) agent=${W_PIDS[2]}; url=$W_HTTP; hdr=() ;;
  http) agent=${W_PIDS[3]}; url=$W_HTTP_ENDPOINT; hdr=(-H "Host: $W_HTTP_HOST") ;;
  rathole) need_rathole; start_rathole "$HTTP_PORT"; edge=${RH_PIDS[0]} agent=${RH_PIDS[1]}
    url=http://$RH_ADDR/; hdr=() ;;
  *) echo "--endpoint: tcp, http or rathole" >&2; exit 2 ;;
esac
if ((EVENTS)); then
  [[ $EP == http ]] || { echo "--events: with --endpoint http" >&2; exit 2; }
  warren_api
  subscribe_every_request "$(traffic_file_destination)" >/dev/null
fi
sleep 1
calls=(sendto recvfrom writev readv read write epoll_wait futex openat close statx newfstatat madvise munmap mmap)
ev=$(printf 'syscalls:sys_enter_%s,' "${calls[@]}"); ev=${ev%,}
perf stat -x, -e "$ev" -p "$edge" -o "$WORK/edge.csv" -- sleep "$SECS" & p1=$!
perf stat -x, -e "$ev" -p "$agent" -o "$WORK/agent.csv" -- sleep "$SECS" & p2=$!
cmd=(wrk -t2 -c64 -d"${SECS}s" "${hdr[@]}" "$url")
# utime and stime (fields 14 and 15 of /proc/PID/stat), in clock ticks
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
read -r eu0 es0 < <(cpu_ticks "$edge"); read -r au0 as0 < <(cpu_ticks "$agent")
"${cmd[@]}" >"$WORK/wrk.txt" 2>&1
read -r eu1 es1 < <(cpu_ticks "$edge"); read -r au1 as1 < <(cpu_ticks "$agent")
wait "$p1" "$p2"
reqs=$(awk '/requests in/{print $1}' "$WORK/wrk.txt")
echo
echo "system calls per request, $EP endpoint$( ((EVENTS)) && echo ', every request an event to a file'); command: $(printf '%q ' "${cmd[@]}")"
echo "requests: $reqs ($(awk '/Requests\/sec/{print $2}' "$WORK/wrk.txt") req/s; perf stat runs as long as wrk)"
if [[ $EP == rathole ]]; then printf '%-12s %8s %8s\n' syscall server client
else printf '%-12s %8s %8s\n' syscall edge agent; fi
us_per_req() { python3 -c "print(f'{$1 * 1e6 / $(getconf CLK_TCK) / $reqs:.2f}')"; }
printf '%-12s %8s %8s\n' cpu_user_us "$(us_per_req $((eu1 - eu0)))" "$(us_per_req $((au1 - au0)))"
printf '%-12s %8s %8s\n' cpu_sys_us "$(us_per_req $((es1 - es0)))" "$(us_per_req $((as1 - as0)))"
for c in "${calls[@]}"; do
  e=$(awk -F, -v n="syscalls:sys_enter_$c" '$3==n{print $1}' "$WORK/edge.csv")
  a=$(awk -F, -v n="syscalls:sys_enter_$c" '$3==n{print $1}' "$WORK/agent.csv")
  printf '%-12s %8s %8s\n' "$c" "$(python3 -c "print(f'{${e:-0}/$reqs:.3f}')")" "$(python3 -c "print(f'{${a:-0}/$reqs:.3f}')")"
done
