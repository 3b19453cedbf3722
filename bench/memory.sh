#!/usr/bin/env bash
# The edge's memory per idle https visitor connection and per idle agent session (issue #22,
# target 4: <= 16 KiB per idle visitor connection, <= 64 KiB per idle agent session; tcp
# endpoint connections are bench/conns.sh's).
#
#   bench/memory.sh [--https 0,5000,10000] [--sessions 0,1000,5000,10000] [--settle 3]
#
# https: a fresh edge and agents (bench/warren-setup.sh); a Python asyncio client opens N TLS
#   connections to the https endpoint (SNI and Host its name), makes one HTTP/1.1 request on
#   each (keep-alive) and holds them idle; after --settle seconds the RSS of the edge and of the
#   endpoint's agent are read, then one more request goes over every held connection (a failure
#   counts as "lost"). Reported: RSS growth / N for the edge and for the agent. The edge closes
#   a kept-alive HTTP/1.1 connection idle for header_read_timeout (30 s, docs/LIMITS.md): all N
#   must open and settle within that, or the first ones are gone when RSS is read (and "lost"
#   on the check); on 2 vCPUs about 400 TLS connections open per second.
# sessions: a fresh edge (--max-sessions and --max-agent-connections-per-ip raised: every
#   session comes from 127.0.0.1); target/release/examples/hold_sessions opens N sessions, each
#   binding one http endpoint with a random name; RSS growth of the edge / sessions online.
# Every process needs N + a few descriptors: N is bounded by the open-file hard limit.
# Needs: target/release/warren, target/release/examples/hold_sessions
# (cargo build --release -p warren; cargo build --release -p warren-agent --example hold_sessions),
# nginx, python3.
set -euo pipefail
HTTPS=0,5000,10000 SESSIONS=0,1000,5000,10000 SETTLE=3
while (($#)); do
  case $1 in
    --https) HTTPS=$2; shift 2 ;;
    --sessions) SESSIONS=$2; shift 2 ;;
    --settle) SETTLE=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
source "$(dirname "$0")/lib.sh"
need_tools nginx
need_warren
HOLD=$ROOT/target/release/examples/hold_sessions
raise_nofile 65536
widen_ports
HTTP_PORT=$(freeport)
# Every held visitor connection keeps an upstream connection of the agent open: nginx must
# hold them all, or it closes idle ones to make room and the held connections' next requests
# race those closes. The open-file limit bounds each worker.
start_nginx "$HTTP_PORT" 2 "$(( $(ulimit -n) - 100 ))"
export IPERF_PORT=$HTTP_PORT HTTP_PORT

cat >"$WORK/tls_client.py" <<'EOF'
# tls_client.py PORT NAME N PARALLEL: N idle keep-alive TLS connections, one GET each; on stdin
# "check" one more GET on every one, anything else closes them all.
import asyncio, collections, ssl, sys, time
port, name, n, par = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
req = f"GET / HTTP/1.1\r\nHost: {name}\r\n\r\n".encode()
conns, kinds = [], collections.Counter()
async def get(r, w):
    w.write(req)
    await w.drain()
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    if not head.startswith(b"HTTP/1.1 200"):
        raise ValueError(head[:40])
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    await asyncio.wait_for(r.readexactly(length), 10)
async def one(sem, i):
    async with sem:
        w = None
        try:
            # 16 loopback source addresses: max_visitor_connections_per_ip is 10,000.
            r, w = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname=name.split(":")[0],
                local_addr=(f"127.0.0.{2 + i % 16}", 0)), 10)
            await get(r, w)
            conns.append((r, w))
        except Exception as e:
            kinds[type(e).__name__] += 1
            if w is not None:
                w.close()
async def check(sem, r, w):
    async with sem:
        try:
            await get(r, w)
            return True
        except Exception:
            return False
async def main():
    sem = asyncio.Semaphore(par)
    t = time.monotonic()
    await asyncio.gather(*(one(sem, i) for i in range(n)))
    print(f"opened={len(conns)} errors={n - len(conns)} secs={time.monotonic() - t:.1f} kinds={dict(kinds)}", flush=True)
    loop = asyncio.get_running_loop()
    cmd = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
    if cmd == "check":
        ok = await asyncio.gather(*(check(sem, r, w) for r, w in conns))
        print(f"alive={sum(ok)} lost={len(ok) - sum(ok)}", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
    for _, w in conns:
        w.close()
asyncio.run(main())
EOF

agents_rss() { local t=0 p; for p in "${W_PIDS[@]:1}"; do t=$((t + $(rss_kib "$p"))); done; echo "$t"; }
rows=()
IFS=, read -r -a counts <<<"$HTTPS"
for n in "${counts[@]}"; do
  [[ -n $n ]] || continue
  start_warren
  port=${W_HTTPS_HOST##*:}
  # one request first, so that lazily set-up state is in the baseline
  python3 "$WORK/tls_client.py" "$port" "$W_HTTPS_HOST" 1 1 <<<quit >/dev/null
  sleep 0.5
  e0=$(rss_kib "${W_PIDS[0]}") a0=$(agents_rss)
  err=0 lost=0 secs=-
  if ((n > 0)); then
    coproc CL { python3 "$WORK/tls_client.py" "$port" "$W_HTTPS_HOST" "$n" 200; }
    read -r line <&"${CL[0]}"; echo "  https n=$n: $line" >&2
    err=$(sed 's/.*errors=\([0-9]*\).*/\1/' <<<"$line"); secs=$(sed 's/.*secs=\([0-9.]*\).*/\1/' <<<"$line")
    sleep "$SETTLE"
  fi
  e1=$(rss_kib "${W_PIDS[0]}") a1=$(agents_rss)
  if ((n > 0)); then
    echo check >&"${CL[1]}"; read -r line <&"${CL[0]}"; echo "  https n=$n: $line" >&2
    lost=$(sed 's/.*lost=\([0-9]*\).*/\1/' <<<"$line")
    echo quit >&"${CL[1]}"; wait "$CL_PID" 2>/dev/null || true
    per=$(python3 -c "print(f'{($e1 - $e0) / $n:.1f} {($a1 - $a0) / $n:.1f} {($e1 - $e0 + $a1 - $a0) / $n:.1f}')")
  else
    per="- - -"
  fi
  rows+=("$(printf '%-9s %7s | %5s %5s %6s | %9s %9s | %9s %9s %9s' https "$n" "$err" "$lost" "$secs" "$e1" "$a1" $per)")
  stop "${W_PIDS[@]}"
done

IFS=, read -r -a counts <<<"$SESSIONS"
if ((${#counts[@]})) && [[ ! -x $HOLD ]]; then
  echo "no $HOLD; build it: cargo build --release -p warren-agent --example hold_sessions" >&2
  counts=()
fi
for n in "${counts[@]}"; do
  [[ -n $n ]] || continue
  WARREN_EDGE_ARGS="--max-sessions 20000 --max-agent-connections-per-ip 20000" start_warren
  token=$(sed -n 's/^ *authtoken: *//p' "$W_LOGS/edge.log" | head -1)
  connect=$(sed -n 's/^ *agents connect: *\([^ ]*\).*/\1/p' "$W_LOGS/edge.log" | head -1)
  coproc HS { "$HOLD" "$connect" "$W_LOGS/data/tls/ca.pem" "$token" 1 1 "127.0.0.1:$HTTP_PORT" 2>&1; }
  read -r line <&"${HS[0]}"; echo quit >&"${HS[1]}"; wait "$HS_PID" 2>/dev/null || true
  sleep 0.5
  e0=$(rss_kib "${W_PIDS[0]}") err=0 lost=0 secs=-
  if ((n > 0)); then
    coproc HS { "$HOLD" "$connect" "$W_LOGS/data/tls/ca.pem" "$token" "$n" 100 "127.0.0.1:$HTTP_PORT" 2>/dev/null; }
    read -r line <&"${HS[0]}"; echo "  sessions n=$n: $line" >&2
    err=$(sed 's/.*failed \([0-9]*\).*/\1/' <<<"$line"); secs=$(sed 's/.* in \([0-9.]*\)s.*/\1/' <<<"$line")
    sleep "$SETTLE"
  fi
  e1=$(rss_kib "${W_PIDS[0]}")
  if ((n > 0)); then
    echo check >&"${HS[1]}"; read -r line <&"${HS[0]}"; echo "  sessions n=$n: still $line" >&2
    online=$((n - err))
    lost=$((online - $(sed 's/online \([0-9]*\).*/\1/' <<<"$line")))
    echo quit >&"${HS[1]}"; wait "$HS_PID" 2>/dev/null || true
    per=$(python3 -c "print(f'{($e1 - $e0) / max($online, 1):.1f}')")
  else
    per=-
  fi
  rows+=("$(printf '%-9s %7s | %5s %5s %6s | %9s %9s | %9s %9s %9s' sessions "$n" "$err" "$lost" "$secs" "$e1" - "$per" - "$per")")
  stop "${W_PIDS[@]}"
done

echo
echo "idle https visitor connections and idle agent sessions (RSS in KiB; per_* = RSS growth / N)"
echo "command: bench/memory.sh --https $HTTPS --sessions $SESSIONS --settle $SETTLE   (ulimit -n $(ulimit -n))"
printf '%-9s %7s | %5s %5s %6s | %9s %9s | %9s %9s %9s\n' kind N errors lost open_s edge agents per_edge per_agent per_both
for r in "${rows[@]}"; do echo "$r"; done
echo "targets (issue #22): <= 16 KiB per idle visitor connection, <= 64 KiB per idle agent session"
