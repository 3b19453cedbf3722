#!/usr/bin/env bash
# Issue #22's targets 1 and 2 as medians: runs ../shared/bench/compare.sh (tcp endpoint against
# rathole plain: one iperf3 stream, wrk -t2 -c64) and bench/https.sh (https endpoint against
# nginx terminating TLS: h2load h2 and HTTP/1.1) one after the other, --runs times, and prints
# every run's figures, the median of each and the ratios (of the medians, and the median of
# the per-run ratios), with the CPU named.
#
#   bench/medians.sh [--runs 5] [--seconds 5] [--only tcp|https]
#
# Targets: tcp endpoint >= 1.3x rathole plain on both, p99 <= rathole's; https endpoint >= 0.8x
# nginx on HTTP/1.1 and >= 1.0x on h2, p99 no higher. The raw outputs stay in bench/results/.
# Needs what compare.sh and https.sh need (rathole from compare.sh's cache, h2load, nginx).
set -euo pipefail
RUNS=5 SECS=5 ONLY=
while (($#)); do
  case $1 in
    --runs) RUNS=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
source "$(dirname "$0")/lib.sh"
need_warren
out=$ROOT/bench/results/medians-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
cpu=$(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)
# The commit names the checkout; a binary chosen with WARREN_BIN may be another build's.
built=$(git -C "$ROOT" rev-parse --short HEAD)
[[ -n ${WARREN_BIN:-} ]] && built="$built (warren binary: $WARREN, not necessarily built from it)"
echo "CPU: $cpu ($(nproc) vCPUs); commit $built; raw output in $out"
for i in $(seq 1 "$RUNS"); do
  if [[ $ONLY != https ]]; then
    echo "run $i/$RUNS: compare.sh" >&2
    "$ROOT/../shared/bench/compare.sh" --seconds "$SECS" --warren-setup "$ROOT/bench/warren-setup.sh" \
      >"$out/compare-$i.txt" 2>&1 || echo "compare.sh run $i failed (see $out/compare-$i.txt)" >&2
  fi
  if [[ $ONLY != tcp ]]; then
    echo "run $i/$RUNS: https.sh" >&2
    "$ROOT/bench/https.sh" --seconds "$SECS" >"$out/https-$i.txt" 2>&1 ||
      echo "https.sh run $i failed (see $out/https-$i.txt)" >&2
  fi
done
python3 - "$out" "$RUNS" <<'EOF'
import os, re, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])

def ms(v):  # "2.68ms" / "712.00us" / "1.2s" -> milliseconds
    m = re.fullmatch(r"([0-9.]+)(us|ms|s)", v or "")
    if not m:
        return None
    return float(m[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m[2]]

def compare_rows(text):
    rows = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) == 10 and f[4] == "|" and f[0] in ("rathole", "warren", "direct"):
            rows[f[0]] = {"gbps": float(f[1]) if f[1] != "-" else None,
                          "rps": float(f[5]) if f[5] != "-" else None, "p99": ms(f[9])}
    return rows

def https_rows(text):
    rows = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 8 and f[0] in ("https-h2", "https-h1", "nginx-h2", "nginx-h1") and f[2] != "-":
            rows[f[0]] = {"rps": float(f[2]), "p99": ms(f[4])}
    return rows

def series(getter):
    vals = []
    for i in range(1, runs + 1):
        try:
            v = getter(i)
        except (KeyError, FileNotFoundError, TypeError):
            v = None
        vals.append(v)
    return vals

def med(vals):
    ok = [v for v in vals if v is not None]
    return statistics.median(ok) if ok else None

def fmt(v, d=2):
    return "-" if v is None else f"{v:.{d}f}"

def load(kind, i):
    with open(os.path.join(out, f"{kind}-{i}.txt")) as f:
        return f.read()

tables = []
if os.path.exists(os.path.join(out, "compare-1.txt")):
    c = {i: compare_rows(load("compare", i)) for i in range(1, runs + 1) if os.path.exists(os.path.join(out, f"compare-{i}.txt"))}
    tables.append(("tcp endpoint vs rathole plain (compare.sh)", [
        ("iperf3 Gbit/s", "gbps", "warren", "rathole", 1.3, 2),
        ("wrk -t2 -c64 req/s", "rps", "warren", "rathole", 1.3, 0),
        ("wrk p99 ms", "p99", "warren", "rathole", None, 2),
    ], c))
if os.path.exists(os.path.join(out, "https-1.txt")):
    h = {i: https_rows(load("https", i)) for i in range(1, runs + 1) if os.path.exists(os.path.join(out, f"https-{i}.txt"))}
    tables.append(("https endpoint vs nginx terminating TLS (https.sh)", [
        ("h2 req/s", "rps", "https-h2", "nginx-h2", 1.0, 0),
        ("h2 p99 ms", "p99", "https-h2", "nginx-h2", None, 2),
        ("HTTP/1.1 req/s", "rps", "https-h1", "nginx-h1", 0.8, 0),
        ("HTTP/1.1 p99 ms", "p99", "https-h1", "nginx-h1", None, 2),
    ], h))
for title, metrics, data in tables:
    print()
    print(title)
    print(f"{'measure':<20} {'system':<9} " + " ".join(f"{'run ' + str(i):>9}" for i in range(1, runs + 1)) + f" {'median':>9}")
    for name, key, ours, theirs, target, d in metrics:
        for sys_ in (ours, theirs):
            vals = series(lambda i: data[i][sys_][key])
            print(f"{name:<20} {sys_:<9} " + " ".join(f"{fmt(v, d):>9}" for v in vals) + f" {fmt(med(vals), d):>9}")
        a, b = series(lambda i: data[i][ours][key]), series(lambda i: data[i][theirs][key])
        per_run = [x / y if x is not None and y else None for x, y in zip(a, b)]
        ma, mb = med(a), med(b)
        ratio = ma / mb if ma is not None and mb else None
        if target is None:
            verdict = "" if ratio is None else ("(target: no higher: met)" if ratio <= 1.0 else "(target: no higher: NOT met)")
        else:
            verdict = "" if ratio is None else f"(target >= {target}x: {'met' if ratio >= target else 'NOT met'})"
        print(f"{'  ratio':<20} {'':<9} " + " ".join(f"{fmt(v):>9}" for v in per_run)
              + f" {fmt(ratio):>9}  median of per-run ratios {fmt(med(per_run))} {verdict}")
EOF
