#!/usr/bin/env bash
# Idle-connection capacity and memory: N concurrent idle TCP connections through a warren tcp
# endpoint (edge + one agent session) and through rathole (server + client, plain TCP
# transport), to a local upstream that accepts and holds them (a Python asyncio echo server).
#
#   bench/conns.sh [--counts 0,1000,10000] [--parallel 200] [--settle 2]
#
# For each count, each system is started afresh (bench/warren-setup.sh; rathole as
# ../shared/bench/compare.sh configures it). A Python asyncio client opens N connections
# (--parallel at a time), sends one byte on each and waits for its echo through the tunnel
# (a connection that fails or does not echo within 10 s is an error). After --settle seconds it
# reads VmRSS of both tunnel processes, then round-trips one more byte on every held connection
# (a failure there counts as "lost"), and closes them all.
# Reported per count: errors/lost, RSS of edge and agent (rathole: server and client) and
# (RSS_total(N) - RSS_total(before opening)) / N, in KiB per idle connection.
# Issue #7's target: 10,000 connections without errors, <= 16 KiB per idle connection
# (edge + agent together); issue #22's: 100,000 on one edge. The open-file limit is raised to
# 65536 (or the hard limit, if lower): every process here needs N + a few descriptors, so
# that bounds N, and so do the ephemeral ports of the agent's connections to the one upstream
# (about 55,000 once widened). The client spreads its connections over 16 loopback source
# addresses.
# Needs: target/release/warren, python3; rathole from compare.sh (skipped if missing).
set -euo pipefail
COUNTS=0,1000,10000 PARALLEL=200 SETTLE=2
while (($#)); do
  case $1 in
    --counts) COUNTS=$2; shift 2 ;;
    --parallel) PARALLEL=$2; shift 2 ;;
    --settle) SETTLE=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
source "$(dirname "$0")/lib.sh"
need_warren
raise_nofile 65536
widen_ports
IFS=, read -r -a counts <<<"$COUNTS"
max=0; for n in "${counts[@]}"; do ((n > max)) && max=$n; done
if ((max + 256 > $(ulimit -n))); then
  echo "WARNING: open-file limit $(ulimit -n) is too low for $max connections per process" >&2
fi
systems=(warren); have_rathole && systems+=(rathole)

cat >"$WORK/holder.py" <<'EOF'
import asyncio, sys
async def handle(r, w):
    try:
        while True:
            b = await r.read(4096)
            if not b:
                break
            w.write(b)
            await w.drain()
    except Exception:
        pass
    finally:
        w.close()
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
EOF
cat >"$WORK/client.py" <<'EOF'
# client.py HOST PORT N PARALLEL: opens N connections, round-trips b"x" on each, reports,
# then on stdin "check" round-trips b"y" on every held one, on "quit" closes all.
import asyncio, collections, sys, time
host, port, n, par = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
conns, kinds = [], collections.Counter()
async def rt(r, w, b):
    w.write(b)
    await w.drain()
    got = await asyncio.wait_for(r.readexactly(1), 10)
    if got != b:
        raise ValueError("wrong byte")
async def one(sem, i):
    async with sem:
        w = None
        try:
            # Spread over 16 loopback source addresses: the edge allows 10,000 visitor
            # connections per address (max_visitor_connections_per_ip).
            src = (f"127.0.0.{2 + i % 16}", 0) if host.startswith("127.") else None
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=src), 10)
            await rt(r, w, b"x")
            conns.append((r, w))
        except Exception as e:
            kinds[type(e).__name__] += 1
            if w is not None:
                w.close()
async def check(sem, r, w):
    async with sem:
        try:
            await rt(r, w, b"y")
            return True
        except Exception:
            return False
async def main():
    sem = asyncio.Semaphore(par)
    t = time.monotonic()
    await asyncio.gather(*(one(sem, i) for i in range(n)))
    print(f"opened={len(conns)} errors={n - len(conns)} secs={time.monotonic() - t:.1f} kinds={dict(kinds)}", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        cmd = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if cmd == "check":
            ok = await asyncio.gather(*(check(sem, r, w) for r, w in conns))
            print(f"alive={sum(ok)} lost={len(ok) - sum(ok)}", flush=True)
        else:
            for _, w in conns:
                w.close()
            print("closed", flush=True)
            return
asyncio.run(main())
EOF

declare -A ERR LOST RA RB PER SECS
measure() { # system count -> fills the arrays for "$1/$2"
  local s=$1 n=$2 addr pa pb b0 b1 line holder
  # A fresh upstream port each time: the agent's (or rathole client's) connections to it all
  # come from 127.0.0.1, and the previous measurement's closed ones sit in TIME_WAIT for a
  # minute, taking ephemeral ports a large N needs.
  UP=$(freeport)
  python3 "$WORK/holder.py" "$UP" & holder=$!; track "$holder"
  wait_port 127.0.0.1 "$UP"
  if [[ $s == warren ]]; then
    IPERF_PORT=$UP HTTP_PORT=$UP start_warren
    addr=$W_TCP pa=${W_PIDS[0]} pb=${W_PIDS[1]} # edge, agent of the tcp endpoint for $IPERF_PORT
  else
    start_rathole "$UP"
    addr=$RH_ADDR pa=${RH_PIDS[0]} pb=${RH_PIDS[1]}
  fi
  # one connection first, so that lazily set-up state is in the baseline
  python3 "$WORK/client.py" "${addr%:*}" "${addr##*:}" 1 1 <<<quit >/dev/null
  sleep 0.5
  b0=$(($(rss_kib "$pa") + $(rss_kib "$pb")))
  ERR[$s/$n]=0 LOST[$s/$n]=0 SECS[$s/$n]=-
  if ((n > 0)); then
    coproc CL { python3 "$WORK/client.py" "${addr%:*}" "${addr##*:}" "$n" "$PARALLEL"; }
    read -r line <&"${CL[0]}"
    echo "  $s n=$n: $line" >&2
    ERR[$s/$n]=$(sed 's/.*errors=\([0-9]*\).*/\1/' <<<"$line")
    SECS[$s/$n]=$(sed 's/.*secs=\([0-9.]*\).*/\1/' <<<"$line")
    sleep "$SETTLE"
  fi
  RA[$s/$n]=$(rss_kib "$pa") RB[$s/$n]=$(rss_kib "$pb")
  b1=$((RA[$s/$n] + RB[$s/$n]))
  if ((n > 0)); then
    echo check >&"${CL[1]}"; read -r line <&"${CL[0]}"
    echo "  $s n=$n: $line" >&2
    LOST[$s/$n]=$(sed 's/.*lost=\([0-9]*\).*/\1/' <<<"$line")
    echo quit >&"${CL[1]}"; read -r line <&"${CL[0]}"
    wait "$CL_PID" 2>/dev/null || true
    PER[$s/$n]=$(python3 -c "print(f'{($b1 - $b0) / $n:.1f}')")
  else
    PER[$s/$n]=-
  fi
  for p in $pa $pb; do kill -0 "$p" 2>/dev/null || echo "  WARNING: $s process $p died" >&2; done
  if [[ $s == warren ]]; then stop "${W_PIDS[@]}"; else stop "${RH_PIDS[@]}"; fi
  stop "$holder"
}
for n in "${counts[@]}"; do
  for s in "${systems[@]}"; do measure "$s" "$n"; done
done

echo
echo "idle connections through the tunnel (upstream: asyncio echo server; RSS in KiB; per_conn = RSS growth / N)"
echo "command: bench/conns.sh --counts $COUNTS --parallel $PARALLEL --settle $SETTLE   (ulimit -n $(ulimit -n))"
printf '%7s | %6s %5s %6s %9s %9s %9s | %6s %5s %6s %9s %9s %9s\n' N w_err lost open_s edge agent per_conn \
  r_err lost open_s server client per_conn
for n in "${counts[@]}"; do
  row=$(printf '%7s | %6s %5s %6s %9s %9s %9s' "$n" "${ERR[warren/$n]}" "${LOST[warren/$n]}" "${SECS[warren/$n]}" \
    "${RA[warren/$n]}" "${RB[warren/$n]}" "${PER[warren/$n]}")
  if [[ -n ${ERR[rathole/$n]:-} ]]; then
    row+=$(printf ' | %6s %5s %6s %9s %9s %9s' "${ERR[rathole/$n]}" "${LOST[rathole/$n]}" "${SECS[rathole/$n]}" \
      "${RA[rathole/$n]}" "${RB[rathole/$n]}" "${PER[rathole/$n]}")
  fi
  echo "$row"
done
echo "target (issue #7): 0 errors at 10,000 connections, per_conn (edge+agent) <= 16 KiB"
