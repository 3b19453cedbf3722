#!/usr/bin/env bash
# Overload: warren's tcp endpoint in front of nginx driven at twice its sustainable rate, while
# a second, independent agent session's endpoint is probed to show the edge stays responsive.
#
#   bench/overload.sh [--seconds 10] [--clients 256] [--factor 2]
#
# bench/warren-setup.sh starts the edge and its agents: the tcp endpoint of one session
# forwards to nginx A (the load), the tcp endpoint of another session to nginx B (the probe);
# both nginx have one worker. Phases, each for --seconds (idle: 2 s):
#   idle:     the probe alone (its baseline)
#   max:      wrk -t2 -c64 -d<N>s --latency URL          -> the sustainable rate R (req/s)
#   overload: h2load --h1 -t2 -c<clients> -D<N> --rps=<ceil(factor*R/clients)> URL
#             (constant rate per client; offered = rps x clients ~ factor x R)
# The probe (Python, one process) opens a new TCP connection to the second endpoint every
# 100 ms on a fixed schedule, sends a GET with Connection: close and reads the whole response
# (5 s timeout = failure); its median/p99/max latency per phase are reported.
# Reported for the load: achieved req/s, latency p50/p90/p99/max (from h2load's --log-file:
# from sending a request to the end of its response), errors in % of requests (target < 1 %).
# Note: h2load is not open-loop: a client that falls behind sends its due requests as soon as
# its previous response arrives, so latency excludes the time a request waited in h2load.
# Needs: target/release/warren, wrk, h2load, nginx (installed with apt-get if missing).
set -euo pipefail
SECS=10 CLIENTS=256 FACTOR=2
while (($#)); do
  case $1 in
    --seconds) SECS=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --factor) FACTOR=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
source "$(dirname "$0")/lib.sh"
need_tools wrk h2load nginx
need_warren
raise_nofile 65536 >/dev/null
LOAD_PORT=$(freeport) PROBE_PORT=$(freeport)
start_nginx "$LOAD_PORT"; start_nginx "$PROBE_PORT"
IPERF_PORT=$PROBE_PORT HTTP_PORT=$LOAD_PORT start_warren
LOAD_URL=$W_HTTP PROBE=$W_TCP   # two agent sessions: tcp endpoints for $HTTP_PORT and $IPERF_PORT

cat >"$WORK/probe.py" <<'EOF'
# probe.py HOST PORT OUT: every 100 ms a new connection and one GET; writes "t_ms latency_ms|fail"
import asyncio, sys, time
host, port, out = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], "w", buffering=1)
req = b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
async def once(t0):
    s = time.monotonic()
    try:
        async def go():
            r, w = await asyncio.open_connection(host, port)
            w.write(req)
            data = await r.read()
            w.close()
            if not data.startswith(b"HTTP/1.1 200"):
                raise ValueError(data[:40])
        await asyncio.wait_for(go(), 5)
        out.write(f"{(s - t0) * 1000:.0f} {(time.monotonic() - s) * 1000:.3f}\n")
    except Exception:
        out.write(f"{(s - t0) * 1000:.0f} fail\n")
async def main():
    t0 = time.monotonic()
    tasks, i = set(), 0
    while True:
        i += 1
        t = asyncio.create_task(once(t0))
        tasks.add(t); t.add_done_callback(tasks.discard)
        await asyncio.sleep(max(0, t0 + i * 0.1 - time.monotonic()))
asyncio.run(main())
EOF
probe() { # phase-name: starts the probe, sets PROBE_PID
  python3 "$WORK/probe.py" "${PROBE%:*}" "${PROBE##*:}" "$WORK/probe-$1.txt" & PROBE_PID=$!; track $PROBE_PID
}
probe_stats() { # phase-name -> "n median p99 max failures"
  python3 - "$WORK/probe-$1.txt" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1]) if len(l.split()) == 2]
ok = sorted(float(v) for _, v in rows if v != "fail")
q = lambda p: f"{ok[min(len(ok) - 1, int(p * len(ok)))]:.2f}ms" if ok else "-"
print(len(rows), q(0.5), q(0.99), f"{ok[-1]:.2f}ms" if ok else "-", len(rows) - len(ok))
EOF
}
sleep 1
declare -A PN PMED PP99 PMAX PFAIL
phase_end() { stop "$PROBE_PID"; read -r PN[$1] PMED[$1] PP99[$1] PMAX[$1] PFAIL[$1] <<<"$(probe_stats "$1")"; }

probe idle; sleep 2; phase_end idle

probe max
WRK_CMD="wrk -t2 -c64 -d${SECS}s --latency $LOAD_URL"
w=$($WRK_CMD 2>&1 || true); echo "$w" >"$WORK/wrk.txt"
phase_end max
R=$(awk '/Requests\/sec/{printf "%d", $2}' <<<"$w")
R_P50=$(awk '$1=="50%"{print $2}' <<<"$w"); R_P99=$(awk '$1=="99%"{print $2}' <<<"$w")
R_ERR=$(sed -n 's/.*Socket errors: //p' <<<"$w"); R_ERR=${R_ERR:-none}
[[ -n $R && $R -gt 0 ]] || { echo "wrk measured nothing:" >&2; echo "$w" >&2; exit 1; }
RPS_PER=$(python3 -c "import math;print(math.ceil($FACTOR * $R / $CLIENTS))")
OFFERED=$((RPS_PER * CLIENTS))
sleep 1

probe overload
H2_CMD="h2load --h1 -t2 -c$CLIENTS -D$SECS --rps=$RPS_PER $LOAD_URL"
h=$($H2_CMD --log-file="$WORK/h2load.log" 2>&1 || true); echo "$h" >"$WORK/h2load.txt"
phase_end overload
ACH=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' <<<"$h" | cut -d. -f1)
read -r TOT FAILED <<<"$(awk '/^requests:/{print $2, $10+$12+$14}' <<<"$h")"
read -r O50 O90 O99 OMAX <<<"$(python3 - "$WORK/h2load.log" <<'EOF'
import sys
v = sorted(int(l.split("\t")[2]) for l in open(sys.argv[1]) if l.count("\t") >= 2 and l.split("\t")[1] != "-1")
q = lambda p: f"{v[min(len(v) - 1, int(p * len(v)))] / 1000:.2f}ms" if v else "-"
print(q(0.5), q(0.9), q(0.99), f"{v[-1] / 1000:.2f}ms" if v else "-")
EOF
)"
ERRPCT=$(python3 -c "t,f=int('${TOT:-0}'),int('${FAILED:-0}');print(f'{100*f/t:.2f}' if t else '-')")
alive=ok
for p in "${W_PIDS[@]}"; do kill -0 "$p" 2>/dev/null || alive="DIED: pid $p"; done

echo
echo "overload of a warren tcp endpoint (nginx, 1 worker), probe on another agent session's tcp endpoint"
echo "max:      $WRK_CMD"
echo "overload: $H2_CMD   (offered $OFFERED req/s = ${FACTOR} x R)"
printf '%-9s %10s %10s %9s %9s %9s %9s %8s\n' load offered achieved p50 p90 p99 max errors
printf '%-9s %10s %10s %9s %9s %9s %9s %8s\n' max - "$R" "$R_P50" - "$R_P99" - "$R_ERR"
printf '%-9s %10s %10s %9s %9s %9s %9s %8s\n' overload "$OFFERED" "${ACH:--}" "$O50" "$O90" "$O99" "$OMAX" "${ERRPCT}%"
echo "  overload requests: ${TOT:-?} total, ${FAILED:-?} failed/errored/timed out (target < 1 %)"
echo "probe (new connection + GET every 100 ms through the second session):"
printf '  %-9s %7s %9s %9s %9s %6s\n' phase probes median p99 max failed
for ph in idle max overload; do
  printf '  %-9s %7s %9s %9s %9s %6s\n' "$ph" "${PN[$ph]}" "${PMED[$ph]}" "${PP99[$ph]}" "${PMAX[$ph]}" "${PFAIL[$ph]}"
done
echo "warren processes after the run: $alive; edge RSS $(rss_kib "${W_PIDS[0]}") KiB"
