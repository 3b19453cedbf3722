#!/usr/bin/env bash
# Instructions the edge executes per proxied request, counted by valgrind's callgrind.
#
#   bench/instructions.sh [--requests 20000] [--events] [--https [--h2]]
#
# Unlike the wall-clock figures, which move by ±15 % on a shared 2-core machine, the count is
# repeatable: the same binary gave 939.0 and 939.5 million instructions for the same 20,000
# requests. So it can tell two builds apart where req/s cannot. It counts user-space work only
# (the kernel's share of a request is in bench/syscalls.sh).
#
# The edge runs under callgrind (about 50 times slower); the agents and nginx run normally.
# h2load --h1 -c8 sends 2,000 requests to warm up, then the counters are zeroed, N requests are
# sent and the counters dumped: first through the tcp endpoint, then through the plain http
# endpoint (Host routed at the edge). Reported: instructions per request over all the edge's
# threads. With --events, the http endpoint is counted once more with a subscription that
# takes every request's http_request_complete.v0 to a file destination (issue #18's case): the
# difference is what a traffic event costs, delivery to the file included. With --https, the
# https endpoint (TLS at the edge, HTTP/1.1) is counted too, with the agent of that endpoint also
# under callgrind, and then nginx (one process: master_process off) terminating TLS and
# proxying to the same upstream with keepalive, the same way (issue #22's yardstick): what
# each side executes per request. With --h2 as well, the https endpoint is counted once more
# over HTTP/2 (h2load -c8 -m10: ten requests in flight per connection), in the edge only. The dumps are kept in bench/results/ for callgrind_annotate
# (not tracked).
# Needs: valgrind, h2load (nghttp2-client), nginx, target/release/warren.
set -euo pipefail
N=20000 EVENTS=0 HTTPS=0 H2=0
while (($#)); do
  case $1 in
    --requests) N=$2; shift 2 ;;
    --events) EVENTS=1; shift ;;
    --https) HTTPS=1; shift ;;
    --h2) H2=1; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
source "$(dirname "$0")/lib.sh"
need_tools valgrind h2load nginx
need_warren
HTTP_PORT=$(freeport)
start_nginx "$HTTP_PORT"
# warren-setup.sh starts every process with $WARREN_BIN: only the edge goes under callgrind.
cat >"$WORK/warren" <<EOF
#!/usr/bin/env bash
HTTPS=$HTTPS
if [[ \$1 == edge ]]; then
  exec valgrind --tool=callgrind --callgrind-out-file="$WORK/edge.cg" "$WARREN" "\$@"
fi
if ((HTTPS)) && [[ "\$*" == *bench-tls.* ]]; then
  exec valgrind --tool=callgrind --callgrind-out-file="$WORK/agent.cg" "$WARREN" "\$@"
fi
exec "$WARREN" "\$@"
EOF
chmod +x "$WORK/warren"
export IPERF_PORT=$HTTP_PORT HTTP_PORT
WARREN_BIN=$WORK/warren start_warren
edge=${W_PIDS[0]}
mkdir -p "$ROOT/bench/results"
stamp=$(date +%Y%m%d-%H%M%S)
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
# The commit names the checkout; a binary chosen with WARREN_BIN may be another build's.
[[ -n ${WARREN_BIN:-} ]] && commit="$commit-bin"
PROTO=(--h1)

count() { # name h2load-args...: the edge's instructions
  count_in "$edge" edge "$@"
}
count_in() { # pid dump-prefix name h2load-args...
  local pid=$1 prefix=$2 name=$3; shift 3
  h2load "${PROTO[@]}" -n 2000 -c 8 "$@" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local out
  out=$(h2load "${PROTO[@]}" -n "$N" -c 8 "$@")
  callgrind_control -d "$pid" >/dev/null 2>&1
  local ok
  ok=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' <<<"$out")
  [[ $ok == "$N" ]] || { echo "$name: only ${ok:-0} of $N requests got 2xx" >&2; echo "$out" >&2; exit 1; }
  local dump
  for _ in $(seq 1 100); do
    dump=$(ls -t "$WORK"/"$prefix".cg.* 2>/dev/null | head -1)
    [[ -n $dump ]] && [[ $dump != "${last:-}" ]] && grep -q '^totals:' "$dump" 2>/dev/null && break
    sleep 0.1
  done
  last=$dump
  local total
  total=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$dump")
  cp "$dump" "$ROOT/bench/results/callgrind-$stamp-$commit-$name.out"
  printf '%-14s %12s %10s   %s\n' "$name" "$total" "$((total / N))" "bench/results/callgrind-$stamp-$commit-$name.out"
}

echo "edge instructions per request (callgrind; h2load --h1 -n $N -c 8; commit $commit${WARREN_BIN:+, warren binary $WARREN_BIN})"
printf '%-14s %12s %10s   %s\n' endpoint instructions per_req dump
count tcp "$W_HTTP"
host=${W_HTTP_HOST} addr=${W_HTTP_ENDPOINT#http://}
count http "--connect-to=${addr%/}" "http://$host/"
if ((EVENTS)); then
  warren_api
  sub=$(subscribe_every_request "$(traffic_file_destination)")
  count http+events "--connect-to=${addr%/}" "http://$host/"
  # --https below counts without events
  call DELETE "/event_subscriptions/$sub" >/dev/null
fi
if ((HTTPS)); then
  https_port=${W_HTTPS_HOST##*:}
  agent=${W_PIDS[4]} # warren-setup.sh's fourth agent: the https endpoint's
  count https "--connect-to=127.0.0.1:$https_port" "https://$W_HTTPS_HOST/"
  # the same requests once more, counted in the https endpoint's agent
  count_in "$agent" agent https-agent "--connect-to=127.0.0.1:$https_port" "https://$W_HTTPS_HOST/"
  if ((H2)); then
    PROTO=(-m 10)
    count https-h2 "--connect-to=127.0.0.1:$https_port" "https://$W_HTTPS_HOST/"
    PROTO=(--h1)
  fi
  # nginx terminating TLS and proxying to the same upstream, in one process under callgrind
  ngx_port=$(freeport)
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=${W_HTTPS_HOST%:*}" \
    -keyout "$WORK/proxy.key" -out "$WORK/proxy.crt" 2>/dev/null
  cat >"$WORK/nginx-proxy.conf" <<EOF
master_process off; daemon off; pid $WORK/nginx-proxy.pid; error_log $WORK/nginx-proxy.err;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$HTTP_PORT; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$ngx_port ssl; ssl_certificate $WORK/proxy.crt; ssl_certificate_key $WORK/proxy.key;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
  valgrind --tool=callgrind --callgrind-out-file="$WORK/nginx.cg" nginx -c "$WORK/nginx-proxy.conf" 2>/dev/null &
  ngx=$!; track "$ngx"
  for _ in $(seq 1 300); do
    python3 -c "import socket;socket.create_connection(('127.0.0.1',$ngx_port),0.2).close()" 2>/dev/null && break
    sleep 0.1
  done
  count_in "$ngx" nginx nginx-proxy "--connect-to=127.0.0.1:$ngx_port" "https://$W_HTTPS_HOST/"
  echo "(https: edge + agent against nginx, per request over keep-alive HTTP/1.1 connections, TLS both ways in warren: visitor and agent link)"
fi
