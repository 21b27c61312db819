#!/usr/bin/env bash
# Budget benchmark (not a test): what one budget rule costs per store, against the same gateway
# without budgets, measured in one run. Four gateways run side by side (no budget; one GCRA rule
# keyed by claim:sub on the memory, SQLite and local Redis stores; the rule never refuses) and
# are loaded in turn, BENCH_ROUNDS rounds of BENCH_DURATION each, in a new random order every
# round, so slow phases of a shared machine (and whatever one run leaves behind for the next)
# hit every variant alike. Per variant: the median over rounds of
# its throughput ratio to "none" in the same round, and of its added p50/p99 latency and CPU.
#
# Knobs: BENCH_ROUNDS (7), BENCH_DURATION (4s), BENCH_CONNS (32), BENCH_THREADS (2).
source "$(dirname "$0")/lib.sh"
ROUNDS=${BENCH_ROUNDS:-7}
DUR=${BENCH_DURATION:-4s}
need wrk nginx redis-server
build_and_mint
start_upstream
start_redis

VARIANTS=(none memory sqlite redis)
declare -A PORT PID
port=${BENCH_GATEWAY_PORT:-18190}
for v in "${VARIANTS[@]}"; do
  case $v in
    none) store="" ;;
    memory) store=memory ;;
    sqlite) rm -f "$RUN/budgets.db"*; store="sqlite://$RUN/budgets.db" ;;
    redis) store="redis://127.0.0.1:$REDIS_PORT/0" ;;
  esac
  gateway_config "$RUN/budget-$v.toml" "$port" 100000 "$store"
  "$BIN" run --config "$RUN/budget-$v.toml" 2>"$RUN/budget-$v.log" & PID[$v]=$!; PIDS+=($!)
  wait_port "$port"
  PORT[$v]=$port
  port=$((port + 1))
done

for v in "${VARIANTS[@]}"; do wrk_result "${PORT[$v]}" "$RUN/warm.txt" 2s; done # warm-up
: > "$RUN/budgets.txt"
for r in $(seq "$ROUNDS"); do
  for v in $(printf '%s\n' "${VARIANTS[@]}" | shuf); do
    c0=$(cpu_ticks "${PID[$v]}"); r0=$(cpu_ticks "$REDIS_PID")
    wrk_result "${PORT[$v]}" "$RUN/warm.txt" "$DUR"
    c1=$(cpu_ticks "${PID[$v]}"); r1=$(cpu_ticks "$REDIS_PID")
    awk -v v="$v" -v r="$r" -v n="$requests" -v d="$duration_us" -v p50="$p50_us" -v p99="$p99_us" \
      -v c=$((c1 - c0)) -v rc=$((r1 - r0)) -v hz="$HZ" -v bad="$non2xx" -v se="$sockerr" \
      'BEGIN{printf "%s %d %.0f %d %d %.1f %.1f %d\n", v, r, n/(d/1e6), p50, p99, c/hz*1e6/n, rc/hz*1e6/n, bad+se}' \
      >> "$RUN/budgets.txt"
  done
done

echo
echo "| store | req/s (median) | throughput vs none | added p50 µs | added p99 µs | gateway CPU µs/req | Redis CPU µs/req | errors |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
awk -v variants="${VARIANTS[*]}" '
  function median(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  { v = $1; r = $2; rps[v, r] = $3; p50[v, r] = $4; p99[v, r] = $5; cpu[v, r] = $6; rcpu[v, r] = $7; err[v] += $8
    if (r > nr) nr = r }
  END {
    nv = split(variants, order, " ")
    for (k = 1; k <= nv; k++) {
      v = order[k]
      for (r = 1; r <= nr; r++) {
        a[r] = rps[v, r]; b[r] = rps[v, r] / rps["none", r]; c[r] = p50[v, r] - p50["none", r]
        d[r] = p99[v, r] - p99["none", r]; e[r] = cpu[v, r]; f[r] = rcpu[v, r]
      }
      printf "| %s | %.0f | %.3f | %+.0f | %+.0f | %.1f | %.1f | %d |\n", v, median(a, nr), median(b, nr),
        median(c, nr), median(d, nr), median(e, nr), median(f, nr), err[v]
    }
  }' "$RUN/budgets.txt"
echo "(per round: $RUN/budgets.txt — store round req/s p50 p99 cpu redis_cpu errors)"
echo "(memory and sqlite do the same work per request — SQLite writes on its own thread, every"
echo " flush_interval — so the gap between their rows is this run's noise floor)"
