#!/usr/bin/env bash
# The cost of a 10-rule traffic policy (issue #22, target 3: at most 5 % of http req/s): two
# plain-http endpoints of one edge, to the same nginx, one with no policy and one whose
# on_http_request has the 10 rules of warren-policy's benchmark (IP, header, method, path,
# host, port and query conditions; none matches, so every rule is evaluated on every request),
# measured with wrk in alternating rounds.
#
#   bench/policy.sh [--seconds 5] [--rounds 5]
#
# Each round: wrk -t2 -c64 -d<s>s -H "Host: NAME" http://127.0.0.1:PORT/ against the plain
# endpoint (off), then the policy's (on); the summary gives the medians and their ratio.
# Needs: target/release/warren, wrk, nginx (installed with apt-get if missing).
set -euo pipefail
SECS=5 ROUNDS=5
while (($#)); do
  case $1 in
    --seconds) SECS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
source "$(dirname "$0")/lib.sh"
need_tools wrk nginx
need_warren
raise_nofile 65536 >/dev/null
HTTP_PORT=$(freeport)
start_nginx "$HTTP_PORT"
export IPERF_PORT=$HTTP_PORT HTTP_PORT; start_warren
token=$(sed -n 's/^ *authtoken: *//p' "$W_LOGS/edge.log" | head -1)
connect=$(sed -n 's/^ *agents connect: *\([^ ]*\).*/\1/p' "$W_LOGS/edge.log" | head -1)
# The 10 rules of warren-policy's own benchmark (crates/warren-policy/benches/eval.rs), so both
# measure the same policy.
sed -n '/^const POLICY: &str = r#"$/,/^"#;$/p' "$ROOT/crates/warren-policy/benches/eval.rs" | sed '1d;$d' >"$WORK/policy.yml"
grep -q '^on_http_request:' "$WORK/policy.yml" || { echo "no POLICY in crates/warren-policy/benches/eval.rs" >&2; exit 1; }
"$WARREN" http "$HTTP_PORT" --url http://policy.warren.localhost --traffic-policy-file "$WORK/policy.yml" \
  --authtoken "$token" --connect-url "$connect" --connect-cas "$W_LOGS/data/tls/ca.pem" --web-addr false \
  >"$WORK/policy-agent.log" 2>&1 & track $!
wait_for "$WORK/policy-agent.log" Forwarding
port=${W_HTTP_HOST##*:} plain=${W_HTTP_HOST%:*}
for h in "$plain" policy.warren.localhost; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $h:$port" "http://127.0.0.1:$port/")
  [[ $code == 200 ]] || { echo "$h answered $code, not 200" >&2; exit 1; }
done
rps() { # host
  wrk_rps -t2 -c64 -d"${SECS}s" -H "Host: $1:$port" "http://127.0.0.1:$port/"
}
# Both endpoints warm (connections, pooled streams) before the first round.
for h in "$plain" policy.warren.localhost; do
  wrk -t2 -c64 -d1s -H "Host: $h:$port" "http://127.0.0.1:$port/" >/dev/null
done
echo "command: wrk -t2 -c64 -d${SECS}s -H 'Host: NAME:$port' http://127.0.0.1:$port/ (NAME: $plain, then policy.warren.localhost)"
offs=() ons=()
for r in $(seq 1 "$ROUNDS"); do
  off=$(rps "$plain"); on=$(rps policy.warren.localhost)
  offs+=("$off") ons+=("$on")
  printf 'round %d: no policy %s req/s, 10-rule policy %s req/s, policy/none %.3f\n' "$r" "$off" "$on" \
    "$(python3 -c "print($on/$off)")"
done
median_ratio "no policy" "10-rule policy" "${offs[*]}" "${ons[*]}" "(target: cost <= 5 %)"
