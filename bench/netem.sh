#!/usr/bin/env bash
# One TCP stream over a link with added delay: direct, through warren, through rathole.
#
#   bench/netem.sh [--delay-ms 50] [--seconds 10] [--emulator auto|netem|tun]
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
# In both namespaces the TCP buffer limits are raised alike for every system (printed below):
#   net.ipv4.tcp_rmem = 4096 131072 67108864, net.ipv4.tcp_wmem = 4096 16384 67108864
# Each for --seconds, one iperf3 stream (iperf3 -c ... -t N, client in A, server in B):
#   direct:  client in A -> iperf3 server in B across the link
#   warren:  edge in A; agent and iperf3 server in B (the agent's TLS+muxado session crosses the
#            link); client in A -> the edge's tcp endpoint on A's loopback
#   rathole: server in A, client in B (plain TCP transport), client in A -> rathole's service port
# Reported: Gbit/s received, ratio to direct, TCP retransmits of the iperf3 stream. Target
# (issue #7): warren >= 80 % of direct.
# IPERF_EXTRA adds iperf3 client flags (e.g. IPERF_EXTRA="-P 4": several streams, which tells a
# per-stream limit from a per-link one).
# Needs: root, ip (iproute2), iperf3, target/release/warren; rathole from compare.sh (optional).
set -euo pipefail
DELAY_MS=50 SECS=10 EMU=auto
while (($#)); do
  case $1 in
    --delay-ms) DELAY_MS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --emulator) EMU=$2; shift 2 ;;
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
  if ! ip netns exec "$A" tc qdisc add dev "$DEV_A" root netem delay "${ONE_WAY}ms" limit 100000 2>/dev/null; then
    ip -n "$A" link del "$DEV_A"; return 1
  fi
  ip netns exec "$B" tc qdisc add dev "$DEV_B" root netem delay "${ONE_WAY}ms" limit 100000
  LINK="veth pair, tc netem delay ${ONE_WAY}ms limit 100000 on each end, MTU 1500"
}
use_tun() {
  DEV_A=wbta$$ DEV_B=wbtb$$
  coproc DL { exec python3 "$ROOT/bench/delayline.py" "$A" "$DEV_A" "$B" "$DEV_B" "$ONE_WAY" 2>"$WORK/delayline.err"; }
  track "$DL_PID"
  local line; read -r line <&"${DL[0]}"
  [[ $line == ready ]] || { echo "delayline.py failed: $(cat "$WORK/delayline.err")" >&2; exit 1; }
  for n in "$A:$DEV_A" "$B:$DEV_B"; do ip -n "${n%%:*}" link set "${n#*:}" mtu 65000 txqueuelen 10000; done
  LINK="TUN devices + bench/delayline.py (userspace), ${ONE_WAY}ms each way, MTU 65000"
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
  ip netns exec "$n" sysctl -q -w net.ipv4.tcp_rmem="4096 131072 67108864" net.ipv4.tcp_wmem="4096 16384 67108864"
done
rtt=$(ip netns exec "$A" ping -c 5 -i 0.2 -q "$IPB" | sed -n 's/^rtt[^=]*= [^/]*\/\([^/]*\)\/.*/\1/p')

ns_wait_port() { # ns port: until 127.0.0.1:port listens in ns (10 s)
  ip netns exec "$1" bash -c "for i in \$(seq 200); do (echo >/dev/tcp/127.0.0.1/$2) 2>/dev/null && exit 0; sleep 0.05; done; exit 1" ||
    { echo "nothing listens on 127.0.0.1:$2 in namespace $1" >&2; return 1; }
}
ip netns exec "$B" iperf3 -s -p 5201 >"$WORK/iperf-s.log" 2>&1 & track $!
ns_wait_port "$B" 5201

run_iperf() { # host port -> "gbps retransmits"
  ip netns exec "$A" iperf3 -c "$1" -p "$2" -t "$SECS" ${IPERF_EXTRA:-} -J 2>/dev/null | python3 -c '
import json, sys
try:
    e = json.load(sys.stdin)["end"]
    print(round(e["sum_received"]["bits_per_second"] / 1e9, 3), e["sum_sent"].get("retransmits", "-"))
except Exception:
    print(0, "-")' || echo "0 -"
}
declare -A GBPS RETR
order=(direct warren)
read -r "GBPS[direct]" "RETR[direct]" <<<"$(run_iperf "$IPB" 5201)"

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
read -r "GBPS[warren]" "RETR[warren]" <<<"$(run_iperf 127.0.0.1 "$wport")"
stop "$agent" "$edge"

if have_rathole; then
  order+=(rathole)
  rathole_configs rh "$IPA:2333" 127.0.0.1:5300 127.0.0.1:5201
  ip netns exec "$A" "$CACHE/bin/rathole" --server "$WORK/rh-s.toml" >"$WORK/rh-s.log" 2>&1 & rs=$!; track $rs
  sleep 0.5
  ip netns exec "$B" "$CACHE/bin/rathole" --client "$WORK/rh-c.toml" >"$WORK/rh-c.log" 2>&1 & rc=$!; track $rc
  ns_wait_port "$A" 5300 # rathole's server listens once the client's control channel is up
  sleep 1
  read -r "GBPS[rathole]" "RETR[rathole]" <<<"$(run_iperf 127.0.0.1 5300)"
  stop "$rc" "$rs"
fi

echo
echo "one TCP stream over a delayed link: added RTT ${DELAY_MS} ms (${ONE_WAY} ms each way), measured ping RTT ${rtt:-?} ms"
echo "link: $LINK"
for n in "$A" "$B"; do echo "sysctl in ${n%$$}: $(ip netns exec "$n" sysctl net.ipv4.tcp_rmem net.ipv4.tcp_wmem | tr '\t\n' ' ;')"; done
echo "command: iperf3 -c HOST -p PORT -t $SECS (client in A; server in B)"
printf '%-8s %9s %8s %8s\n' system gbit_s /direct retrans
for s in "${order[@]}"; do
  printf '%-8s %9s %8s %8s\n' "$s" "${GBPS[$s]}" \
    "$(python3 -c "a,b=float('${GBPS[$s]}'),float('${GBPS[direct]}');print(round(a/b,2) if b else '-')")" "${RETR[$s]}"
done
echo "target (issue #7): warren >= 0.8 x direct"
