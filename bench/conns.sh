#!/usr/bin/env bash
# Idle-connection capacity and memory: N concurrent idle TCP connections through a warren tcp
# endpoint (edge + one agent session) and through rathole (server + client, plain TCP
# transport), to a local upstream that accepts and holds them (a Python asyncio echo server).
#
#   bench/conns.sh [--counts 0,1000,10000] [--parallel 200] [--settle 2] [--timeout 10]
#
# For each count, each system is started afresh (bench/warren-setup.sh; rathole as
# ../shared/bench/compare.sh configures it). A Python asyncio client opens N connections
# (--parallel at a time), sends one byte on each and waits for its echo through the tunnel
# (a connection that fails or does not echo within --timeout seconds is an error; raise it in
# an emulated guest, bench/vm.sh, which is many times slower). After --settle seconds it
# reads VmRSS of both tunnel processes, then round-trips one more byte on every held connection
# (a failure there counts as "lost"; it prints the lost ones' failure kinds, their address and
# when in the opening they were opened, and the kernel's TCP counters that moved), and closes
# them all. per_conn and edge_per divide by the connections held (N less the errors).
# Reported per count: errors/lost, RSS of edge and agent (rathole: server and client) and
# (RSS_total(N) - RSS_total(before opening)) / N, in KiB per idle connection.
# Issue #7's target: 10,000 connections without errors, <= 16 KiB per idle connection
# (edge + agent together); issue #22's: 100,000 on one edge (edge_per: the edge's RSS growth
# alone / connections held). The open-file limit is raised to N + 1,024 (at least 65536; at most the hard
# limit): every process here needs N + a few descriptors, so that bounds N. So do the
# ephemeral ports of an agent's connections to one upstream address (about 55,000 once
# widened): above 50,000 connections warren's are spread over its two tcp endpoints (two
# agents, each to an upstream of its own; "agent" is then both agents' RSS) and rathole,
# which has one service, is skipped. The edge's visitor-connection limit (100,000 by default)
# is raised to N + 1,000 when N comes near it. The client spreads its connections over 16
# loopback source addresses (the edge allows 10,000 from one address). On this project's
# sandboxed machines the open-file hard limit is 20,000 and cannot be raised: run counts
# above that in a guest of its own, `bench/vm.sh -- bench/conns.sh --counts 0,100000`.
# Needs: target/release/warren, python3; rathole from compare.sh (skipped if missing).
set -euo pipefail
COUNTS=0,1000,10000 PARALLEL=200 SETTLE=2 TIMEOUT=10
while (($#)); do
  case $1 in
    --counts) COUNTS=$2; shift 2 ;;
    --parallel) PARALLEL=$2; shift 2 ;;
    --settle) SETTLE=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
source "$(dirname "$0")/lib.sh"
need_warren
IFS=, read -r -a counts <<<"$COUNTS"
max=0; for n in "${counts[@]}"; do ((n > max)) && max=$n; done
raise_nofile $((max + 1024 > 65536 ? max + 1024 : 65536))
widen_ports
# Above this, one agent's connections to its one upstream would run out of ephemeral ports.
SPLIT=50000
if ((max + 1000 > 100000)); then
  export WARREN_EDGE_ARGS="${WARREN_EDGE_ARGS:-} --max-visitor-connections $((max + 1000))"
fi
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
# client.py HOST:PORT[,HOST:PORT] N PARALLEL TIMEOUT: opens N connections (in turn to each address),
# round-trips b"x" on each, reports, then on stdin "check" round-trips b"y" on every held one,
# on "quit" closes all.
import asyncio, collections, socket, sys, time
addrs = [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in sys.argv[1].split(",")]
n, par, timeout = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
conns, kinds = [], collections.Counter()
async def rt(r, w, b):
    w.write(b)
    await w.drain()
    got = await asyncio.wait_for(r.readexactly(1), timeout)
    if got != b:
        raise ValueError("wrong byte")
async def one(sem, i):
    async with sem:
        w = s = None
        try:
            # Spread over 16 loopback source addresses: the edge allows 10,000 visitor
            # connections per address (max_visitor_connections_per_ip).
            host, port = addrs[i % len(addrs)]
            if host.startswith("127."):
                # A port taken by bind() is one connect() never picks, on any address: with
                # IP_BIND_ADDRESS_NO_PORT the port is chosen at connect, as the agents' are, or
                # the client's ports leave the agents too few for their upstream connections
                # (seen: EADDRNOTAVAIL after ~32,000 per agent at N = 100,000).
                s = socket.socket()
                s.setsockopt(socket.IPPROTO_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT
                s.bind((f"127.0.0.{2 + i % 16}", 0))
                s.setblocking(False)
                await asyncio.wait_for(asyncio.get_running_loop().sock_connect(s, (host, port)), timeout)
                r, w = await asyncio.open_connection(sock=s)
            else:
                r, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            await rt(r, w, b"x")
            conns.append((i, r, w))
        except Exception as e:
            kinds[type(e).__name__] += 1
            if w is not None:
                w.close()
            elif s is not None:
                s.close()
async def check(sem, r, w):
    async with sem:
        try:
            await rt(r, w, b"y")
            return None
        except Exception as e:
            return type(e).__name__
async def main():
    sem = asyncio.Semaphore(par)
    t = time.monotonic()
    await asyncio.gather(*(one(sem, i) for i in range(n)))
    print(f"opened={len(conns)} errors={n - len(conns)} secs={time.monotonic() - t:.1f} kinds={dict(kinds)}", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        cmd = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if cmd == "check":
            res = await asyncio.gather(*(check(sem, r, w) for _, r, w in conns))
            lost = [(i, k) for (i, _, _), k in zip(conns, res) if k is not None]
            # Which ones: the failure's kind, the address, and when in the opening each was
            # opened (tenths of N: the first tenth has been idle longest).
            why = collections.Counter(k for _, k in lost)
            by_addr = collections.Counter(i % len(addrs) for i, _ in lost)
            by_tenth = [0] * 10
            for i, _ in lost:
                by_tenth[i * 10 // n] += 1
            print(f"alive={len(res) - len(lost)} lost={len(lost)} kinds={dict(why)} "
                  f"by_address={[by_addr[a] for a in range(len(addrs))]} by_open_tenth={by_tenth}", flush=True)
        else:
            for _, _, w in conns:
                w.close()
            print("closed", flush=True)
            return
asyncio.run(main())
EOF

# The kernel's TCP counters (/proc/net/snmp, /proc/net/netstat) and the packets its
# per-CPU backlog dropped (/proc/net/softnet_stat): `tcpstat.py FILE` saves them,
# `tcpstat.py FILE diff` prints the ones that moved since. They tell why connections went
# (keepalive or retransmission timeouts, resets, listen-queue or backlog drops).
cat >"$WORK/tcpstat.py" <<'EOF'
import json, sys
def read():
    c = {}
    for f in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = open(f).read().splitlines()
        for head, vals in zip(lines[::2], lines[1::2]):
            pre, names = head.split(":", 1)
            if pre in ("Tcp", "TcpExt"):
                for k, v in zip(names.split(), vals.split(":", 1)[1].split()):
                    c[f"{pre}.{k}"] = int(v)
    c["softnet.dropped"] = sum(int(l.split()[1], 16) for l in open("/proc/net/softnet_stat"))
    return c
now = read()
if len(sys.argv) > 2:
    was = json.load(open(sys.argv[1]))
    moved = {k: v - was.get(k, 0) for k, v in now.items() if v != was.get(k, 0) and k != "Tcp.CurrEstab"}
    print(" ".join(f"{k}={v}" for k, v in sorted(moved.items())) or "(none moved)")
else:
    json.dump(now, open(sys.argv[1], "w"))
EOF

declare -A ERR LOST RA RB PER EPER SECS
agents_rss() { local sum=0 p; for p in "$@"; do sum=$((sum + $(rss_kib "$p"))); done; echo "$sum"; }
measure() { # system count -> fills the arrays for "$1/$2"
  local s=$1 n=$2 addr pa pb b0 e0 b1 line holders=() up ups=()
  # Fresh upstream ports each time: the agent's (or rathole client's) connections to one all
  # come from 127.0.0.1, and the previous measurement's closed ones sit in TIME_WAIT for a
  # minute, taking ephemeral ports a large N needs.
  for _ in 1 2; do
    up=$(freeport); ups+=("$up")
    python3 "$WORK/holder.py" "$up" & holders+=($!); track $!
    wait_port 127.0.0.1 "$up"
  done
  if [[ $s == warren ]]; then
    # The first two agents serve tcp endpoints, for $IPERF_PORT and $HTTP_PORT.
    IPERF_PORT=${ups[0]} HTTP_PORT=${ups[1]} start_warren
    addr=$W_TCP pa=${W_PIDS[0]} pb=(${W_PIDS[1]})
    if ((n > SPLIT)); then
      addr+=,$(sed 's|^http://\([^/]*\)/.*|\1|' <<<"$W_HTTP") pb+=(${W_PIDS[2]})
    fi
  else
    start_rathole "${ups[0]}"
    addr=$RH_ADDR pa=${RH_PIDS[0]} pb=(${RH_PIDS[1]})
  fi
  # one connection first (to each address), so that lazily set-up state is in the baseline
  python3 "$WORK/client.py" "$addr" 2 1 "$TIMEOUT" <<<quit >/dev/null
  sleep 0.5
  e0=$(rss_kib "$pa") b0=$(($(rss_kib "$pa") + $(agents_rss "${pb[@]}")))
  ERR[$s/$n]=0 LOST[$s/$n]=0 SECS[$s/$n]=-
  python3 "$WORK/tcpstat.py" "$WORK/tcp0.json"
  if ((n > 0)); then
    coproc CL { python3 "$WORK/client.py" "$addr" "$n" "$PARALLEL" "$TIMEOUT"; }
    read -r line <&"${CL[0]}"
    echo "  $s n=$n: $line" >&2
    ERR[$s/$n]=$(sed 's/.*errors=\([0-9]*\).*/\1/' <<<"$line")
    SECS[$s/$n]=$(sed 's/.*secs=\([0-9.]*\).*/\1/' <<<"$line")
    sleep "$SETTLE"
  fi
  RA[$s/$n]=$(rss_kib "$pa") RB[$s/$n]=$(agents_rss "${pb[@]}")
  b1=$((RA[$s/$n] + RB[$s/$n]))
  if ((n > 0)); then
    echo check >&"${CL[1]}"; read -r line <&"${CL[0]}"
    echo "  $s n=$n: $line" >&2
    LOST[$s/$n]=$(sed 's/.*lost=\([0-9]*\).*/\1/' <<<"$line")
    echo quit >&"${CL[1]}"; read -r line <&"${CL[0]}"
    wait "$CL_PID" 2>/dev/null || true
    # per connection held: the ones that failed to open hold nothing
    held=$((n - ERR[$s/$n])); ((held > 0)) || held=1
    PER[$s/$n]=$(python3 -c "print(f'{($b1 - $b0) / $held:.1f}')")
    EPER[$s/$n]=$(python3 -c "print(f'{(${RA[$s/$n]} - $e0) / $held:.1f}')")
  else
    PER[$s/$n]=- EPER[$s/$n]=-
  fi
  echo "  $s n=$n: kernel counters that moved: $(python3 "$WORK/tcpstat.py" "$WORK/tcp0.json" diff)" >&2
  for p in $pa "${pb[@]}"; do kill -0 "$p" 2>/dev/null || echo "  WARNING: $s process $p died" >&2; done
  # Why connections failed or were lost, in warren's words (its logs go away with the run).
  if [[ $s == warren ]] && ((ERR[$s/$n] + LOST[$s/$n] > 0)); then
    for log in "$W_LOGS"/edge.log "$W_LOGS"/a1.log "$W_LOGS"/a2.log; do
      echo "  ${log##*/}: $(grep -ci 'warn\|error' "$log") warnings/errors; the first and last lines:" >&2
      { head -3 "$log"; echo ...; tail -5 "$log"; } | cut -c1-300 | sed 's/^/    /' >&2
    done
  fi
  if ((ERR[$s/$n] + LOST[$s/$n] > 0)) && dmesg >/dev/null 2>&1; then
    echo "  kernel log (last lines):" >&2; dmesg | tail -5 | sed 's/^/    /' >&2
  fi
  if [[ $s == warren ]]; then stop "${W_PIDS[@]}"; else stop "${RH_PIDS[@]}"; fi
  stop "${holders[@]}"
}
for n in "${counts[@]}"; do
  for s in "${systems[@]}"; do
    if [[ $s == rathole ]] && ((n > SPLIT)); then
      echo "  rathole n=$n: skipped (one service: its client's connections to one upstream would run out of ephemeral ports)" >&2
      continue
    fi
    measure "$s" "$n"
  done
done

echo
echo "idle connections through the tunnel (upstream: asyncio echo server; RSS in KiB; per_conn = RSS growth / N)"
echo "command: bench/conns.sh --counts $COUNTS --parallel $PARALLEL --settle $SETTLE --timeout $TIMEOUT   (ulimit -n $(ulimit -n))"
printf '%7s | %6s %5s %6s %9s %9s %9s %9s | %6s %5s %6s %9s %9s %9s\n' N w_err lost open_s edge agent per_conn edge_per \
  r_err lost open_s server client per_conn
for n in "${counts[@]}"; do
  row=$(printf '%7s | %6s %5s %6s %9s %9s %9s %9s' "$n" "${ERR[warren/$n]}" "${LOST[warren/$n]}" "${SECS[warren/$n]}" \
    "${RA[warren/$n]}" "${RB[warren/$n]}" "${PER[warren/$n]}" "${EPER[warren/$n]}")
  if [[ -n ${ERR[rathole/$n]:-} ]]; then
    row+=$(printf ' | %6s %5s %6s %9s %9s %9s' "${ERR[rathole/$n]}" "${LOST[rathole/$n]}" "${SECS[rathole/$n]}" \
      "${RA[rathole/$n]}" "${RB[rathole/$n]}" "${PER[rathole/$n]}")
  fi
  echo "$row"
done
echo "target (issue #7): 0 errors at 10,000 connections, per_conn (edge+agent) <= 16 KiB"
