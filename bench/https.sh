#!/usr/bin/env bash
# warren's https endpoint (TLS terminated at the edge, HTTP parsed and routed by Host, sent to the
# agent over a pooled proxy stream) measured with h2load from nghttp2-client, HTTP/2 and HTTP/1.1.
#
#   bench/https.sh [--seconds 5] [--clients 64] [--streams 10]
#
# bench/warren-setup.sh starts the edge and an agent with --url https://bench-tls.warren.localhost
# for nginx (1 worker, "hello world"). h2load connects to the edge's https port while sending the
# endpoint's name as SNI and :authority/Host (--connect-to), and does not verify the edge's
# self-signed certificate. Runs, each for --seconds:
#   https-h2:   h2load -t2 -c64 -m10 -D5 --connect-to=127.0.0.1:PORT https://NAME:PORT/
#   https-h1:   h2load --h1 -t2 -c64 -D5 --connect-to=127.0.0.1:PORT https://NAME:PORT/
#   http-h1:    the same through the plain-http endpoint (no TLS), for reference
#   nginx-h2, nginx-h1: the https-h2 and https-h1 commands against nginx terminating TLS and
#               proxying straight to the same upstream, with no tunnel (2 workers, HTTP/2,
#               upstream keepalive, keepalive_requests high enough that h2load is never cut
#               off): the limit for "TLS at the edge, then forward" (issue #22's target: warren
#               >= 0.8x on HTTP/1.1 and >= 1.0x on h2, p99 no higher)
# and, the issue's own command for the plain http endpoint (compare it with compare.sh's rathole
# row of the same run-all.sh run):
#   http-wrk:   wrk -t2 -c64 -d<seconds>s --latency -H "Host: NAME" http://127.0.0.1:PORT/
# Reported: requests/s, latency per request (p50/p99 computed from h2load's --log-file; mean and
# max as h2load prints them) and errors (failed + errored + timed-out requests; 4xx/5xx shown apart).
# H2LOAD_SHOW=1 also prints h2load's own output.
# TLS handshakes happen once per client at the start (connections are kept alive).
# Needs: target/release/warren, h2load, nginx (installed with apt-get if missing).
set -euo pipefail
SECS=5 CLIENTS=64 STREAMS=10
while (($#)); do
  case $1 in
    --seconds) SECS=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --streams) STREAMS=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
source "$(dirname "$0")/lib.sh"
need_tools h2load nginx wrk
need_warren
raise_nofile 65536 >/dev/null
HTTP_PORT=$(freeport)
start_nginx "$HTTP_PORT"
export IPERF_PORT=$HTTP_PORT HTTP_PORT; start_warren
[[ -n $W_HTTPS_HOST ]] || { echo "bench/warren-setup.sh printed no https_endpoint= line" >&2; exit 1; }
https_port=${W_HTTPS_HOST##*:} http_port=${W_HTTP_HOST##*:}
sleep 1

# nginx as the TLS-terminating reverse proxy to compare with (same certificate kind: a
# self-signed ECDSA P-256 one, as the edge's local CA issues).
NGINX_TLS_PORT=$(freeport)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=$W_HTTPS_HOST" \
  -keyout "$WORK/proxy.key" -out "$WORK/proxy.crt" 2>/dev/null
cat >"$WORK/nginx-proxy.conf" <<EOF
worker_processes 2; daemon off; pid $WORK/nginx-proxy.pid; error_log $WORK/nginx-proxy.err;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; http2_max_requests 1000000;
  upstream up { server 127.0.0.1:$HTTP_PORT; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$NGINX_TLS_PORT ssl http2 backlog=4096;
    ssl_certificate $WORK/proxy.crt; ssl_certificate_key $WORK/proxy.key;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
nginx -c "$WORK/nginx-proxy.conf" 2>/dev/null & track $!
wait_port 127.0.0.1 "$NGINX_TLS_PORT"

declare -A CMD
order=(https-h2 https-h1 http-h1 nginx-h2 nginx-h1)
CMD[https-h2]="h2load -t2 -c$CLIENTS -m$STREAMS -D$SECS --connect-to=127.0.0.1:$https_port https://$W_HTTPS_HOST/"
CMD[https-h1]="h2load --h1 -t2 -c$CLIENTS -D$SECS --connect-to=127.0.0.1:$https_port https://$W_HTTPS_HOST/"
CMD[http-h1]="h2load --h1 -t2 -c$CLIENTS -D$SECS --connect-to=127.0.0.1:$http_port http://$W_HTTP_HOST/"
CMD[nginx-h2]="h2load -t2 -c$CLIENTS -m$STREAMS -D$SECS --connect-to=127.0.0.1:$NGINX_TLS_PORT https://$W_HTTPS_HOST/"
CMD[nginx-h1]="h2load --h1 -t2 -c$CLIENTS -D$SECS --connect-to=127.0.0.1:$NGINX_TLS_PORT https://$W_HTTPS_HOST/"
pct() { # log-file -> "p50 p99" in ms, over successful requests
  python3 - "$1" <<'EOF'
import sys
v = sorted(int(l.split("\t")[2]) for l in open(sys.argv[1]) if l.count("\t") >= 2 and l.split("\t")[1] != "-1")
q = lambda p: f"{v[min(len(v) - 1, int(p * len(v)))] / 1000:.2f}ms" if v else "-"
print(q(0.50), q(0.99))
EOF
}
declare -A RPS P50 P99 MEAN MAX ERRS PROTO NON2XX
for s in "${order[@]}"; do
  log=$WORK/h2load-$s.log
  out=$(${CMD[$s]} --log-file="$log" 2>&1 || true)
  echo "$out" >"$WORK/h2load-$s.txt"; [[ -z ${H2LOAD_SHOW:-} ]] || echo "$out" >&2
  RPS[$s]=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out" | cut -d. -f1)
  read -r P50[$s] P99[$s] <<<"$(pct "$log")"
  read -r _ _ _ _ MAX[$s] MEAN[$s] _ <<<"$(grep '^time for request:' <<<"$out")"
  # h2load counts a non-2xx/3xx response as failed: errors = failed + errored + timeout, of which non-2xx
  ERRS[$s]=$(awk '/^requests:/{f=$10+$12+$14} /^status codes:/{n=$7+$9} END{print f+0}' <<<"$out")
  NON2XX[$s]=$(awk '/^status codes:/{print $7 "/" $9}' <<<"$out")
  PROTO[$s]=$(sed -n 's/^Application protocol: //p' <<<"$out")
  [[ -n ${RPS[$s]} ]] || { echo "h2load ($s) failed:" >&2; echo "$out" | tail -15 >&2; }
done
echo
echo "warren https endpoint (TLS at the edge), upstream nginx; latency per request"
for s in "${order[@]}"; do echo "command ($s): ${CMD[$s]}"; done
printf '%-9s %8s %10s %9s %9s %9s %9s %7s %s\n' path proto req_per_s p50 p99 mean max errors 4xx/5xx
for s in "${order[@]}"; do
  printf '%-9s %8s %10s %9s %9s %9s %9s %7s %s\n' "$s" "${PROTO[$s]:--}" "${RPS[$s]:--}" "${P50[$s]:--}" \
    "${P99[$s]:--}" "${MEAN[$s]:--}" "${MAX[$s]:--}" "${ERRS[$s]:--}" "${NON2XX[$s]:--}"
done
echo "errors = h2load's failed + errored + timed-out requests (a 4xx/5xx response counts as failed)"
ratio() { [[ -n ${RPS[$1]} && -n ${RPS[$2]} ]] && python3 -c "print(f'{${RPS[$1]}/${RPS[$2]}:.2f}')" || echo -; }
echo "warren / nginx (TLS-terminating reverse proxy, no tunnel): h2 $(ratio https-h2 nginx-h2)x (p99 ${P99[https-h2]:--} vs ${P99[nginx-h2]:--}), HTTP/1.1 $(ratio https-h1 nginx-h1)x (p99 ${P99[https-h1]:--} vs ${P99[nginx-h1]:--})"

wrk_cmd=(wrk -t2 -c"$CLIENTS" -d"${SECS}s" --latency -H "Host: $W_HTTP_HOST" "http://127.0.0.1:$http_port/")
out=$("${wrk_cmd[@]}" 2>&1 || true)
echo "$out" >"$WORK/wrk-http.txt"
echo
echo "plain http endpoint with wrk; command (http-wrk): $(printf "%q " "${wrk_cmd[@]}")"
printf '%-9s %10s %9s %9s %s\n' path req_per_s p50 p99 "errors (non-2xx/3xx, socket errors)"
printf '%-9s %10s %9s %9s %s\n' http-wrk "$(sed -n 's/^Requests\/sec: *\([0-9]*\).*/\1/p' <<<"$out")" \
  "$(awk '$1=="50%"{print $2}' <<<"$out")" "$(awk '$1=="99%"{print $2}' <<<"$out")" \
  "$(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | paste -sd';' || true)"
