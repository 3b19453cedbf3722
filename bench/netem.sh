#!/usr/bin/env bash
# One TCP stream over a link with added delay: direct, through warren, through rathole.
#
#   bench/netem.sh [--delay-ms 50] [--seconds 10] [--emulator auto|netem|tun] [--rate-mbit N]
#
# --delay-ms is the ROUND-TRIP time added (default 50 ms, issue #7's "50 ms of added delay"):
# half of it is added in each direction (25 ms one way by default).
# Two network namespaces, A and B, are joined by a link that delays packets:
#   netem: a veth pair with `tc qdisc add dev X root netem delay <RTT/2>ms limit 100000` on both
#          ends (MTU 1500, with the kernel's usual GSO/GRO);
#   tun:   for kernels without sch_netem (such as this sandbox's): bench/delayline.py, a TUN
#          device in each namespace (MTU 65000) and a Python loop that forwards every packet
#          <RTT/2> ms later in each direction. Its CPU use is shared with the systems measured.
#   auto (default) uses netem when the kernel has it, else tun.
# --rate-mbit N also caps the link at N Mbit/s each way (netem's `rate`; with tun, a `tbf` qdisc
#   on each TUN device, queue limit one bandwidth-delay product). With a cap below what the
#   machine can push, the link and not the CPU is the bottleneck, so the ratio to direct shows
#   what the windows do rather than which system spends more CPU per byte.
# In both namespaces the TCP buffer limits are raised alike for every system (printed below):
#   net.ipv4.tcp_rmem = 4096 DEFAULT 67108864, net.ipv4.tcp_wmem = 4096 16384 67108864, where
#   DEFAULT is Linux's 131072 on the netem link and 1048576 on the tun link (see use_tun).
# Each for --seconds, one iperf3 stream (iperf3 -c ... -t N, client in A, server in B):
#   direct:  client in A -> iperf3 server in B across the link
#   warren:  edge in A; agent and iperf3 server in B (the agent's TLS+muxado session crosses the
#            link); client in A -> the edge's tcp endpoint on A's loopback
#   rathole: server in A, client in B (plain TCP transport), client in A -> rathole's service port
# Reported: Gbit/s received, ratio to direct, TCP retransmits of the iperf3 stream, where the
# CPU went (share of all cores: idle, the delay line, the tunnel's two processes) and the
# throughput of each second (how fast each one ramps up). Target (issue #7): warren >= 80 % of
# direct.
# IPERF_EXTRA adds iperf3 client flags (e.g. IPERF_EXTRA="-P 4": several streams, which tells a
# per-stream limit from a per-link one).
# Needs: root, ip (iproute2), iperf3, target/release/warren; rathole from compare.sh (optional).
set -euo pipefail
DELAY_MS=50 SECS=10 EMU=auto RATE=
while (($#)); do
  case $1 in
    --delay-ms) DELAY_MS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --emulator) EMU=$2; shift 2 ;;
    --rate-mbit) RATE=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
source "$(dirname "$0")/lib.sh"
need_tools ip tc iperf3 ping
need_warren
ONE_WAY=$(python3 -c "print(f'{$DELAY_MS / 2:g}')")
A=wbA$$ B=wbB$$ IPA=10.213.0.1 IPB=10.213.0.2
ip netns add "$A"; on_exit "ip netns del $A"
ip netns add "$B"; on_exit "ip netns del $B"
for n in "$A" "$B"; do ip -n "$n" link set lo up; done

use_netem() {
  ip link add "wbva$$" type veth peer name "wbvb$$" || return 1
  ip link set "wbva$$" netns "$A"; ip link set "wbvb$$" netns "$B"
  DEV_A=wbva$$ DEV_B=wbvb$$
  local rate=${RATE:+rate ${RATE}mbit}
  if ! ip netns exec "$A" tc qdisc add dev "$DEV_A" root netem delay "${ONE_WAY}ms" $rate limit 100000 2>/dev/null; then
    ip -n "$A" link del "$DEV_A"; return 1
  fi
  ip netns exec "$B" tc qdisc add dev "$DEV_B" root netem delay "${ONE_WAY}ms" $rate limit 100000
  LINK="veth pair, tc netem delay ${ONE_WAY}ms $rate limit 100000 on each end, MTU 1500"
  RMEM_DEFAULT=131072
}
use_tun() {
  DEV_A=wbta$$ DEV_B=wbtb$$
  coproc DL { exec python3 "$ROOT/bench/delayline.py" "$A" "$DEV_A" "$B" "$DEV_B" "$ONE_WAY" 2>"$WORK/delayline.err"; }
  track "$DL_PID"
  local line; read -r line <&"${DL[0]}"
  [[ $line == ready ]] || { echo "delayline.py failed: $(cat "$WORK/delayline.err")" >&2; exit 1; }
  for n in "$A:$DEV_A" "$B:$DEV_B"; do ip -n "${n%%:*}" link set "${n#*:}" mtu 65000 txqueuelen 10000; done
  LINK="TUN devices + bench/delayline.py (userspace), ${ONE_WAY}ms each way, MTU 65000"
  # With 64 KB segments, Linux's default 128 KiB receive buffer opens a window of one or two
  # segments. A connection that was idle (an agent's session, rathole's data channel) then
  # crawls for seconds: with so few segments per round trip the receiver's RTT estimate,
  # spoiled by the idle time, takes long to settle, and receive-buffer tuning waits on it
  # (seen with `ss -ti`: rwnd_limited, snd_wnd ~100 KB). 1 MiB opens about 8 segments, and
  # then every system ramps like a fresh connection. (At MTU 1500, 128 KiB is ~40 segments.)
  RMEM_DEFAULT=1048576
  if [[ -n $RATE ]]; then
    # Queue one bandwidth-delay product (at least 1 MiB) before dropping, like a router sized
    # for the path.
    local limit=$((RATE * 125 * DELAY_MS)); ((limit > 1048576)) || limit=1048576
    for n in "$A:$DEV_A" "$B:$DEV_B"; do
      ip netns exec "${n%%:*}" tc qdisc add dev "${n#*:}" root tbf rate "${RATE}mbit" burst 1mb limit "$limit"
    done
    LINK+=", tbf rate ${RATE}mbit burst 1mb limit $limit on each TUN device"
  fi
}
case $EMU in
  netem) use_netem || { echo "tc netem is not available in this kernel (try --emulator tun)" >&2; exit 1; } ;;
  tun) use_tun ;;
  auto) use_netem || use_tun ;;
  *) echo "--emulator: netem, tun or auto" >&2; exit 2 ;;
esac
ip -n "$A" addr add "$IPA/24" dev "$DEV_A"; ip -n "$B" addr add "$IPB/24" dev "$DEV_B"
ip -n "$A" link set "$DEV_A" up; ip -n "$B" link set "$DEV_B" up
for n in "$A" "$B"; do
  ip netns exec "$n" sysctl -q -w net.ipv4.tcp_rmem="4096 $RMEM_DEFAULT 67108864" net.ipv4.tcp_wmem="4096 16384 67108864"
done
rtt=$(ip netns exec "$A" ping -c 5 -i 0.2 -q "$IPB" | sed -n 's/^rtt[^=]*= [^/]*\/\([^/]*\)\/.*/\1/p')

ns_wait_port() { # ns port: until 127.0.0.1:port listens in ns (10 s)
  ip netns exec "$1" bash -c "for i in \$(seq 200); do (echo >/dev/tcp/127.0.0.1/$2) 2>/dev/null && exit 0; sleep 0.05; done; exit 1" ||
    { echo "nothing listens on 127.0.0.1:$2 in namespace $1" >&2; return 1; }
}
ip netns exec "$B" iperf3 -s -p 5201 >"$WORK/iperf-s.log" 2>&1 & track $!
ns_wait_port "$B" 5201

run_iperf() { # host port -> "gbps retransmits per-second-gbps..."
  ip netns exec "$A" iperf3 -c "$1" -p "$2" -t "$SECS" ${IPERF_EXTRA:-} -J 2>/dev/null | python3 -c '
import json, sys
try:
    j = json.load(sys.stdin)
    e = j["end"]
    series = ",".join("%.2f" % (i["sum"]["bits_per_second"] / 1e9) for i in j["intervals"])
    print(round(e["sum_received"]["bits_per_second"] / 1e9, 3), e["sum_sent"].get("retransmits", "-"), series)
except Exception:
    print(0, "-", "-")' || echo "0 - -"
}
# Where the CPU went during a run, as shares of the whole machine (all cores = 100 %):
#   cpu_mark NAME:PID...; <run>; cpu_report  ->  "idle 3% delayline 41% edge 20% ..."
# A run with ~0 % idle is CPU-bound: the link is then not what limits it.
cpu_mark() {
  CPU_MARK=("$@")
  CPU_T0=$(awk '/^cpu /{t=0; for(i=2;i<=NF;i++) t+=$i; print t, $5+$6}' /proc/stat)
  CPU_P0=(); local x; for x in "$@"; do CPU_P0+=("$(awk '{print $14+$15}' "/proc/${x#*:}/stat" 2>/dev/null || echo 0)"); done
}
cpu_report() {
  local t1 i out p1
  t1=$(awk '/^cpu /{t=0; for(i=2;i<=NF;i++) t+=$i; print t, $5+$6}' /proc/stat)
  read -r tot0 idle0 <<<"$CPU_T0"; read -r tot1 idle1 <<<"$t1"
  local dt=$((tot1 - tot0)); ((dt > 0)) || dt=1
  out="idle $(((idle1 - idle0) * 100 / dt))%"
  for i in "${!CPU_MARK[@]}"; do
    p1=$(awk '{print $14+$15}' "/proc/${CPU_MARK[$i]#*:}/stat" 2>/dev/null || echo "${CPU_P0[$i]}")
    out+=" ${CPU_MARK[$i]%%:*} $(((p1 - CPU_P0[i]) * 100 / dt))%"
  done
  echo "$out"
}
DL=()
[[ -n ${DL_PID:-} ]] && DL=("delayline:$DL_PID")
declare -A GBPS RETR CPU SERIES
order=(direct warren)
cpu_mark "${DL[@]}"
read -r "GBPS[direct]" "RETR[direct]" "SERIES[direct]" <<<"$(run_iperf "$IPB" 5201)"
CPU[direct]=$(cpu_report)

# warren: edge in A (agents connect to A's veth address), agent in B
ip netns exec "$A" "$WARREN" edge --data-dir "$WORK/edge" --connect-addr "$IPA:4443" --connect-hostname "$IPA" \
  --https-addr 127.0.0.1:8443 --http-addr 127.0.0.1:8080 --api-addr 127.0.0.1:8088 --tcp-ports 45000-45099 \
  --log-level warn >"$WORK/edge.log" 2>&1 &
edge=$!; track $edge
wait_for "$WORK/edge.log" "authtoken:"
token=$(sed -n 's/^ *authtoken: *//p' "$WORK/edge.log" | head -1)
ip netns exec "$B" "$WARREN" tcp 5201 --authtoken "$token" --connect-url "$IPA:4443" \
  --connect-cas "$WORK/edge/tls/ca.pem" --web-addr false >"$WORK/agent.log" 2>&1 &
agent=$!; track $agent
wait_for "$WORK/agent.log" Forwarding
wport=$(sed -n 's/^Forwarding tcp:\/\/[^:]*:\([0-9]*\).*/\1/p' "$WORK/agent.log")
sleep 1
cpu_mark "${DL[@]}" "edge:$edge" "agent:$agent"
read -r "GBPS[warren]" "RETR[warren]" "SERIES[warren]" <<<"$(run_iperf 127.0.0.1 "$wport")"
CPU[warren]=$(cpu_report)
stop "$agent" "$edge"

if have_rathole; then
  order+=(rathole)
  rathole_configs rh "$IPA:2333" 127.0.0.1:5300 127.0.0.1:5201
  ip netns exec "$A" "$CACHE/bin/rathole" --server "$WORK/rh-s.toml" >"$WORK/rh-s.log" 2>&1 & rs=$!; track $rs
  sleep 0.5
  ip netns exec "$B" "$CACHE/bin/rathole" --client "$WORK/rh-c.toml" >"$WORK/rh-c.log" 2>&1 & rc=$!; track $rc
  ns_wait_port "$A" 5300 # rathole's server listens once the client's control channel is up
  sleep 1
  cpu_mark "${DL[@]}" "server:$rs" "client:$rc"
  read -r "GBPS[rathole]" "RETR[rathole]" "SERIES[rathole]" <<<"$(run_iperf 127.0.0.1 5300)"
  CPU[rathole]=$(cpu_report)
  stop "$rc" "$rs"
fi

echo
echo "one TCP stream over a delayed link: added RTT ${DELAY_MS} ms (${ONE_WAY} ms each way), measured ping RTT ${rtt:-?} ms"
echo "link: $LINK"
for n in "$A" "$B"; do echo "sysctl in ${n%$$}: $(ip netns exec "$n" sysctl net.ipv4.tcp_rmem net.ipv4.tcp_wmem | tr '\t\n' ' ;')"; done
echo "command: iperf3 -c HOST -p PORT -t $SECS (client in A; server in B)"
printf '%-8s %9s %8s %8s   %s\n' system gbit_s /direct retrans "cpu (share of all cores)"
for s in "${order[@]}"; do
  printf '%-8s %9s %8s %8s   %s\n' "$s" "${GBPS[$s]}" \
    "$(python3 -c "a,b=float('${GBPS[$s]}'),float('${GBPS[direct]}');print(round(a/b,2) if b else '-')")" "${RETR[$s]}" "${CPU[$s]}"
done
echo "each second (Gbit/s, sender side; shows how fast each one ramps up):"
for s in "${order[@]}"; do printf '  %-8s %s\n' "$s" "${SERIES[$s]}"; done
echo "target (issue #7): warren >= 0.8 x direct"
