#!/usr/bin/env bash
# cc-gateway through the shared anchors harness (../shared/bench-anchors/run.sh) as a
# candidate, next to nginx, the bare hyper hop and HAProxy verifying the JWT — one run, then
# the issue's ratios with the target beside each. Not a test: see bench/README.md.
#
#   bench/anchors.sh                      # cache on (the release build of this tree)
#   BENCH_CACHE_OFF=1 bench/anchors.sh    # token cache off: every request verifies RS256
#   BENCH_ACCESS_LOG=1 bench/anchors.sh   # access logs on (nginx and cc-gateway, to files)
#   BENCH_TLS=1 bench/anchors.sh          # TLS listeners
#   bench/anchors.sh results.tsv          # only print the ratios of an earlier run
# Knobs: ANCHORS_DIR (../shared/bench-anchors), BENCH_SYSTEMS (direct nginx-proxy haproxy-jwt
# hyper-hop), and the harness's own (BENCH_DURATION, BENCH_CONNS, …).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ANCHORS=${ANCHORS_DIR:-$ROOT/../shared/bench-anchors}
mkdir -p bench/run

if [ $# -eq 0 ]; then
  [ -x "$ANCHORS/run.sh" ] || { echo "bench: no anchors harness at $ANCHORS (set ANCHORS_DIR)" >&2; exit 1; }
  cargo build --release -q
  stamp=$(date -u +%Y%m%d-%H%M%S)
  mode=plain
  [ "${BENCH_CACHE_OFF:-0}" = 1 ] && mode=nocache
  [ "${BENCH_ACCESS_LOG:-0}" = 1 ] && mode=$mode-accesslog
  [ "${BENCH_TLS:-0}" = 1 ] && mode=$mode-tls
  results=$ROOT/bench/run/anchors-$mode-$stamp.md
  cache=100000
  [ "${BENCH_CACHE_OFF:-0}" = 1 ] && cache=0
  (cd "$ANCHORS" && BENCH_RESULTS="$results" \
    BENCH_SYSTEMS="${BENCH_SYSTEMS:-direct nginx-proxy haproxy-jwt hyper-hop}" \
    CANDIDATE_NAME=cc-gateway CANDIDATE_PORT=${CANDIDATE_PORT:-18084} \
    CANDIDATE_CMD="CC_TOKEN_CACHE_SIZE=$cache exec $ROOT/bench/anchor-candidate.sh" ./run.sh) \
    > "$ROOT/bench/run/anchors-$mode-$stamp.log" 2>&1 || {
      echo "bench: the harness failed, see bench/run/anchors-$mode-$stamp.log" >&2; exit 1; }
  tsv=${results%.md}.tsv
  echo "report: $results"
else
  tsv=$1
fi

BENCH_CACHE_OFF=${BENCH_CACHE_OFF:-0} python3 - "$tsv" <<'PY'
import csv, os, sys
rows = {}
with open(sys.argv[1]) as f:
    for r in csv.DictReader(f, delimiter="\t"):
        rows[(r["system"], r["scenario"], r["conns"])] = r
def get(system, scen, conns, field):
    r = rows.get((system, scen, conns))
    try:
        return float(r[field]) if r else None
    except ValueError:
        return None
def ratio(a, b):
    return None if a is None or not b else a / b
def show(label, value, target, higher_is_better=True):
    if value is None:
        print(f"| {label} | n/a | {target} | — |"); return
    t = float(target.split()[-1].rstrip("×"))
    ok = value >= t if higher_is_better else value <= t
    print(f"| {label} | {value:.2f} | {target} | {'met' if ok else '**missed**'} |")
gw = "cc-gateway"
print("\n| ratio (one run) | value | target | |")
print("|---|---:|---:|---|")
if os.environ.get("BENCH_CACHE_OFF") == "1":
    for scen, conns in (("cold", "32"), ("warm", "32")):
        show(f"req/s vs HAProxy-JWT, cache off, {scen} @{conns}",
             ratio(get(gw, scen, conns, "rps"), get("haproxy-jwt", scen, conns, "rps")), "≥ 1.2")
else:
    for scen, conns in (("warm", "32"), ("cold", "32"), ("warm", "256")):
        rps = get(gw, scen, conns, "rps")
        show(f"req/s vs nginx hop, {scen} @{conns}", ratio(rps, get("nginx-proxy", scen, conns, "rps")), "≥ 0.9")
        if conns == "32":
            show(f"req/s vs hyper hop, {scen} @{conns}", ratio(rps, get("hyper-hop", scen, conns, "rps")), "≥ 0.95")
        show(f"p99 vs nginx hop, {scen} @{conns}",
             ratio(get(gw, scen, conns, "p99_ms"), get("nginx-proxy", scen, conns, "p99_ms")), "≤ 1.2", False)
    show("CPU µs/req vs hyper hop, warm @32",
         ratio(get(gw, "warm", "32", "cpu_us_per_req"), get("hyper-hop", "warm", "32", "cpu_us_per_req")), "≤ 1.1", False)
    show("upstream CPU µs/req vs behind nginx, warm @32",
         ratio(get(gw, "warm", "32", "upstream_cpu_us_per_req"), get("nginx-proxy", "warm", "32", "upstream_cpu_us_per_req")), "≤ 1.1", False)
    rss = get(gw, "cold", "32", "rss_mib")
    if rss is not None:
        print(f"| RSS after the cold run, MiB | {rss:.0f} | ≤ 64 | {'met' if rss <= 64 else '**missed**'} |")
print("\nraw (system scenario conns req/s p99 ms CPU µs/req upstream CPU µs/req RSS MiB):")
for (s, scen, conns), r in rows.items():
    print(f"  {s:16} {scen:5} {conns:>4} {r['rps']:>8} {r['p99_ms']:>7} {r['cpu_us_per_req']:>6} {r['upstream_cpu_us_per_req']:>6} {r['rss_mib']:>4}")
PY
