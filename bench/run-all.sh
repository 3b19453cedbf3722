#!/usr/bin/env bash
# Runs every benchmark of issue #7 in order and keeps a log:
#   compare.sh (../shared/bench/compare.sh --seconds 5 --warren-setup bench/warren-setup.sh,
#   as docs/BENCHMARKS.md shows), then bench/conns.sh, connrate.sh, https.sh, netem.sh and
#   overload.sh with their defaults; netem-capped is netem.sh --rate-mbit 2000 (the link, not the
#   CPU, is then the bottleneck); syscalls is bench/syscalls.sh for the tcp and the http endpoint;
#   instructions is bench/instructions.sh (the edge's instructions per request, under callgrind).
#
#   bench/run-all.sh [--seconds N] [--counts LIST] [--only compare,conns,connrate,https,netem,netem-capped,overload,syscalls,instructions]
#
# --seconds N is passed to every benchmark (compare.sh keeps 5 unless given); --counts to conns.sh;
# --only runs a subset (same order). Output goes to the terminal and to
# bench/results/YYYYmmdd-HHMMSS.log (bench/results/ is not tracked). A failing benchmark is
# reported and the next one runs. Needs a release build (cargo build --release -p warren) and,
# for the peers, rathole and bore, which compare.sh installs into ~/.cache/warren-bench on first
# use (with cargo install).
set -euo pipefail
SECS="" COUNTS="" ONLY=compare,conns,connrate,https,netem,netem-capped,overload,syscalls,instructions
while (($#)); do
  case $1 in
    --seconds) SECS=$2; shift 2 ;;
    --counts) COUNTS=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
compare=$root/../shared/bench/compare.sh
[[ -f $compare ]] || compare=/work/shared/bench/compare.sh
mkdir -p "$root/bench/results"
log=$root/bench/results/$(date +%Y%m%d-%H%M%S).log

main() {
  cd "$root"
  echo "== warren benchmarks, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo ?)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "nproc:   $(nproc)"
  echo "kernel:  $(uname -r)"
  echo "cpu:     $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)"
  echo "memory:  $(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "binary:  target/release/warren, built $(date -u -r target/release/warren '+%Y-%m-%d %H:%M UTC' 2>/dev/null || echo '(missing)')"
  echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, before the runs)"
  local b rc
  for b in ${ONLY//,/ }; do
    echo; echo "== $b ($(date -u +%H:%M:%S))"
    case $b in
      compare) set -- bash "$compare" --seconds "${SECS:-5}" --warren-setup "$root/bench/warren-setup.sh" ;;
      conns) set -- bash bench/conns.sh ${COUNTS:+--counts "$COUNTS"} ;;
      connrate | https | netem | overload) set -- bash "bench/$b.sh" ${SECS:+--seconds "$SECS"} ;;
      netem-capped) set -- bash bench/netem.sh --rate-mbit 2000 ${SECS:+--seconds "$SECS"} ;;
      instructions) set -- bash bench/instructions.sh ;;
      syscalls) set -- bash -c 'bash bench/syscalls.sh --endpoint tcp "$@" && bash bench/syscalls.sh --endpoint http "$@"' _ ${SECS:+--seconds "$SECS"} ;;
      *) echo "unknown benchmark: $b"; continue ;;
    esac
    echo "\$ ${*#bash }"
    rc=0; "$@" || rc=$?
    ((rc == 0)) || echo "FAILED: $b exited with $rc"
  done
  echo; echo "== done $(date -u '+%H:%M:%S UTC'); log: $log"
}
main 2>&1 | tee "$log"
