# shellcheck shell=bash
# Shared helpers for the bench/*.sh scripts (sourced, not run). Provides:
#   $ROOT, $WARREN (release binary), $CACHE (rathole/bore from compare.sh), $WORK (temp dir)
#   track PID...          stop PID at exit;    on_exit CMD   run CMD at exit (after that)
#   need_tools CMD...      apt-get install the Debian packages that provide missing commands
#   need_warren / need_rathole   exit with a clear message when the binary is missing
#   freeport               a free TCP port on 127.0.0.1
#   rss_kib PID            VmRSS of PID in KiB
#   start_nginx PORT [WORKERS] [CONNS]  nginx (1 worker, 8192 connections) answering 200 "hello world"
#                          on 127.0.0.1:PORT
#   start_warren           bench/warren-setup.sh with $IPERF_PORT/$HTTP_PORT; sets W_TCP, W_HTTP,
#                          W_HTTP_ENDPOINT, W_HTTP_HOST, W_HTTPS_ENDPOINT, W_HTTPS_HOST, W_PIDS (array),
#                          W_LOGS
#   rathole_configs NAME CTL SVC UP   write rathole's server and client TOML (plain TCP transport)
#   start_rathole PORT     rathole server+client (plain TCP transport, as compare.sh) forwarding
#                          to 127.0.0.1:PORT; sets RH_ADDR (host:port), RH_PIDS (array)
#   widen_ports            the ephemeral port range 10000-65000 for the run, if the kernel allows
#   wrk_rps ARGS...        wrk's requests/s, failing on any non-2xx answer or socket error
#   median_ratio A B "as" "bs" NOTE   the medians of two series and their ratio
#   stop PID...            kill and reap
#   wait_port HOST PORT    until something listens;   wait_for FILE PATTERN   until FILE has it
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WARREN=${WARREN_BIN:-$ROOT/target/release/warren}
CACHE=${WARREN_BENCH_CACHE:-$HOME/.cache/warren-bench}
WORK=$(mktemp -d)
_PIDS=() _ON_EXIT=()
track() { _PIDS+=("$@"); }
on_exit() { _ON_EXIT+=("$1"); }
_cleanup() {
  local rc=$? c p
  trap - EXIT INT TERM
  for p in "${_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for c in "${_ON_EXIT[@]}"; do eval "$c" 2>/dev/null || true; done
  rm -rf "$WORK"
  exit "$rc"
}
trap _cleanup EXIT
trap 'exit 130' INT TERM

need_tools() {
  local miss=() t pkg
  for t in "$@"; do
    command -v "$t" >/dev/null && continue
    case $t in nginx) pkg=nginx-light ;; h2load) pkg=nghttp2-client ;; ip|tc|ss) pkg=iproute2 ;;
      ps|sysctl) pkg=procps ;; ping) pkg=iputils-ping ;;
      qemu-system-x86_64) pkg=qemu-system-x86 ;; *) pkg=$t ;; esac
    miss+=("$pkg")
  done
  if ((${#miss[@]})); then
    echo "installing ${miss[*]} (apt-get)" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${miss[@]}" >/dev/null
  fi
}
need_warren() {
  [[ -x $WARREN ]] || { echo "no warren binary at $WARREN; build it first: cargo build --release -p warren" >&2; exit 1; }
}
have_rathole() { # true if rathole is installed, else explains how to get it
  [[ -x $CACHE/bin/rathole ]] && return 0
  echo "NOTE: no rathole in $CACHE/bin, so rathole is skipped; run ../shared/bench/compare.sh once" \
    "(it installs rathole and bore with cargo install)" >&2
  return 1
}
need_rathole() {
  [[ -x $CACHE/bin/rathole ]] || {
    echo "no rathole in $CACHE/bin; run ../shared/bench/compare.sh once (it installs rathole and bore with cargo install)" >&2
    exit 1
  }
}
freeport() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
wait_port() { # host port
  local i
  for i in $(seq 1 200); do
    python3 -c "import socket,sys;socket.create_connection(('$1',$2),0.2).close()" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on $1:$2" >&2; return 1
}
wait_for() { # file pattern [tenths of a second]
  local i
  for i in $(seq 1 "${3:-300}"); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1:" >&2; tail -20 "$1" >&2; return 1
}
stop() {
  local p
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}
start_nginx() { # port [workers] [connections per worker]
  local port=$1 workers=${2:-1} conns=${3:-8192}
  cat >"$WORK/nginx-$port.conf" <<EOF
worker_processes $workers; daemon off; pid $WORK/nginx-$port.pid; error_log $WORK/nginx-$port.err;
worker_rlimit_nofile $((conns * 2));
events { worker_connections $conns; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$port backlog=4096; location / { return 200 "hello world\n"; } } }
EOF
  nginx -c "$WORK/nginx-$port.conf" & track $!
  wait_port 127.0.0.1 "$port"
}
start_warren() {
  need_warren
  local out
  out=$(bash "$ROOT/bench/warren-setup.sh")
  W_TCP=$(sed -n 's/^tcp=//p' <<<"$out")
  W_HTTP=$(sed -n 's/^http=//p' <<<"$out")
  W_HTTP_ENDPOINT=$(sed -n 's/^http_endpoint=\([^ ]*\) .*/\1/p' <<<"$out")
  W_HTTP_HOST=$(sed -n 's/^http_endpoint=.* host=//p' <<<"$out")
  W_HTTPS_ENDPOINT=$(sed -n 's/^https_endpoint=\([^ ]*\) .*/\1/p' <<<"$out")
  W_HTTPS_HOST=$(sed -n 's/^https_endpoint=.* host=//p' <<<"$out")
  W_LOGS=$(sed -n 's/^logs=//p' <<<"$out")
  IFS=, read -r -a W_PIDS <<<"$(sed -n 's/^pids=//p' <<<"$out")"
  track "${W_PIDS[@]}"
  [[ -n $W_LOGS ]] && on_exit "rm -rf '$W_LOGS'"
  wait_port "${W_TCP%:*}" "${W_TCP##*:}"
}
rathole_configs() { # name control-addr service-addr upstream-addr: $WORK/name-s.toml, name-c.toml
  cat >"$WORK/$1-s.toml" <<EOF
[server]
bind_addr = "$2"
[server.transport]
type = "tcp"
[server.services.t]
token = "bench"
bind_addr = "$3"
EOF
  cat >"$WORK/$1-c.toml" <<EOF
[client]
remote_addr = "$2"
[client.transport]
type = "tcp"
[client.services.t]
token = "bench"
local_addr = "$4"
EOF
}
start_rathole() { # upstream-port
  need_rathole
  local up=$1 ctl svc
  ctl=$(freeport) svc=$(freeport)
  rathole_configs "rh-$svc" "127.0.0.1:$ctl" "127.0.0.1:$svc" "127.0.0.1:$up"
  "$CACHE/bin/rathole" --server "$WORK/rh-$svc-s.toml" >"$WORK/rh-$svc-s.log" 2>&1 &
  RH_PIDS=($!)
  "$CACHE/bin/rathole" --client "$WORK/rh-$svc-c.toml" >"$WORK/rh-$svc-c.log" 2>&1 &
  RH_PIDS+=($!)
  track "${RH_PIDS[@]}"
  RH_ADDR=127.0.0.1:$svc
  wait_port 127.0.0.1 "$svc"
  # the service port listens before the client's control channel is up; give it a moment
  sleep 1
}
# Many connections from one process to one upstream address (an agent's, rathole's) need an
# ephemeral port each: with Linux's default range connect() failed with EADDRNOTAVAIL from
# about 15,100 on here. Widen it for the run where the kernel lets us (restored at exit; two
# scripts run at once would restore each other's setting, so run one at a time).
widen_ports() {
  local f=/proc/sys/net/ipv4/ip_local_port_range old
  old=$(tr -s '\t ' ' ' <"$f")
  if echo "10000 65000" >"$f" 2>/dev/null; then
    on_exit "echo '$old' >$f"
    echo "ephemeral ports: 10000-65000 for this run (was $old)"
  else
    echo "NOTE: could not widen the ephemeral port range ($old): about 14,000 connections to one upstream at most" >&2
  fi
}
# wrk ARGS...: its requests/s; stops the script, saying so, if any answer was not a 2xx or a
# socket failed (a fast error page must not count as throughput)
wrk_rps() {
  local out
  out=$(wrk "$@")
  if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
    echo "wrk $*: $(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | paste -sd';')" >&2
    return 1
  fi
  awk '/^Requests\/sec/{print $2}' <<<"$out"
}
# median_ratio NAME_A NAME_B "A values" "B values" NOTE: both medians and B/A, one line (and
# the cost, 1 - B/A, when NOTE speaks of one)
median_ratio() {
  python3 - "$@" <<'EOF'
import statistics, sys
na, nb, a, b, note = sys.argv[1:6]
ma = statistics.median(float(x) for x in a.split())
mb = statistics.median(float(x) for x in b.split())
cost = f" (cost {100 * (1 - mb / ma):.1f} %)" if "cost" in note else ""
print(f"median: {na} {ma:.0f} req/s, {nb} {mb:.0f} req/s, {nb}/{na} {mb / ma:.3f}{cost} {note}")
EOF
}
# cpu_ticks PID...: "USER SYSTEM" CPU time of the processes so far, in clock ticks (summed)
cpu_ticks() {
  local u=0 s=0 pid f
  for pid in "$@"; do
    read -r -a f <"/proc/$pid/stat"
    # Fields 14 and 15 (utime, stime); the command name in field 2 has no spaces here.
    u=$((u + f[13])) s=$((s + f[14]))
  done
  echo "$u $s"
}
# raise the open-file limit as far as allowed (65536, or the hard limit if lower)
raise_nofile() {
  local want=${1:-65536} hard
  hard=$(ulimit -Hn)
  [[ $hard == unlimited ]] || ((hard >= want)) || want=$hard
  ulimit -n "$want" 2>/dev/null || ulimit -n "$hard"
  echo "open files limit: $(ulimit -n) (hard $(ulimit -Hn))"
}
# warren_api: defines call METHOD PATH [JSON] against the edge's REST API with the API key
# the edge printed at start (start_warren first).
warren_api() {
  W_API=$(sed -n 's/.*REST API: *\([^ ]*\).*/\1/p' "$W_LOGS/edge.log" | head -1)
  W_KEY=$(sed -n 's/^ *api_key: *//p; s/.*API key: *//p' "$W_LOGS/edge.log" | head -1)
  [[ -n $W_API && -n $W_KEY ]] || { echo "no REST API or API key in $W_LOGS/edge.log" >&2; exit 1; }
  call() {
    curl -sf -X "$1" "$W_API$2" -H "Authorization: Bearer $W_KEY" -H "Ngrok-Version: 2" \
      -H "Content-Type: application/json" ${3:+--data "$3"}
  }
}
# traffic_file_destination: a file destination bench.jsonl (1 GiB, one rotated file kept) in
# the edge's events directory; prints its id (warren_api first)
traffic_file_destination() {
  call POST /event_destinations '{"target": {"file": {"name": "bench.jsonl", "max_bytes": 1073741824, "max_files": 1}}}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}
# subscribe_every_request DESTINATION: a subscription of every http_request_complete.v0 to it;
# prints its id
subscribe_every_request() {
  call POST /event_subscriptions "{\"sources\": [{\"type\": \"http_request_complete.v0\"}], \"destination_ids\": [\"$1\"]}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}
# traffic_events_written: lines in the file destination's files (bench.jsonl and bench.jsonl.1)
# and the edge's count of dropped traffic events
traffic_events_written() {
  local n=0 f
  for f in "$W_LOGS/data/events/bench.jsonl" "$W_LOGS/data/events/bench.jsonl.1"; do
    [[ -f $f ]] && n=$((n + $(wc -l <"$f")))
  done
  local dropped
  dropped=$(curl -sf "${W_API%/}/metrics" | awk '/^warren_traffic_events_dropped_total /{print $2}')
  echo "events written to the file: $n; dropped: ${dropped:-unknown}"
}

