#!/usr/bin/env bash
# A/B benchmark (not a test): two builds of cc-gateway on the same config, measured in one run.
# Both gateways run side by side in front of one nginx upstream and are loaded in turn,
# BENCH_ROUNDS rounds of BENCH_DURATION per scenario, in a new random order every round, so
# slow phases of a shared machine hit both alike. Per scenario: the median over rounds of B's
# throughput ratio to A in the same round, B's added p50/p99, and each one's CPU µs/request.
#
#   bench/ab.sh OLD_BINARY [NEW_BINARY]     # NEW defaults to this tree's release build
#   git worktree add /tmp/base main && (cd /tmp/base && cargo build --release)
#   bench/ab.sh /tmp/base/target/release/cc-gateway
#
# Scenarios: warm (one token: cache hits), cold (10,000 tokens round-robin, cache on).
# Knobs: BENCH_ROUNDS (9), BENCH_DURATION (3s), BENCH_CONNS (32), BENCH_THREADS (2),
# BENCH_ACCESS_LOG=1 (each gateway writes its access log to a file of its own).
source "$(dirname "$0")/lib.sh"
ROUNDS=${BENCH_ROUNDS:-9}
DUR=${BENCH_DURATION:-3s}
A_BIN=${1:?usage: bench/ab.sh OLD_BINARY [NEW_BINARY]}
B_BIN=${2:-$BIN}
need wrk nginx
build_and_mint
start_upstream

declare -A PORT PID BINS=([A]=$A_BIN [B]=$B_BIN)
port=${BENCH_GATEWAY_PORT:-18200}
for v in A B; do
  [ "${BENCH_ACCESS_LOG:-0}" = 1 ] && BENCH_ACCESS_LOG_PATH="$RUN/access-$v.log"
  BENCH_ACCESS_LOG_PATH=${BENCH_ACCESS_LOG_PATH:-off} gateway_config "$RUN/ab-$v.toml" "$port" 100000
  "${BINS[$v]}" run --config "$RUN/ab-$v.toml" 2>"$RUN/ab-$v.log" & PID[$v]=$!; PIDS+=($!)
  wait_port "$port"
  PORT[$v]=$port
  port=$((port + 1))
done

for v in A B; do wrk_result "${PORT[$v]}" "$RUN/warm.txt" 2s; done # warm-up
: > "$RUN/ab.txt"
for r in $(seq "$ROUNDS"); do
  for s in warm cold; do
    for v in $(printf '%s\n' A B | shuf); do
      c0=$(cpu_ticks "${PID[$v]}")
      wrk_result "${PORT[$v]}" "$RUN/$s.txt" "$DUR"
      c1=$(cpu_ticks "${PID[$v]}")
      awk -v v="$v" -v s="$s" -v r="$r" -v n="$requests" -v d="$duration_us" -v p50="$p50_us" \
        -v p99="$p99_us" -v c=$((c1 - c0)) -v hz="$HZ" -v bad="$non2xx" -v se="$sockerr" \
        'BEGIN{printf "%s %s %d %.0f %d %d %.1f %d\n", v, s, r, n/(d/1e6), p50, p99, c/hz*1e6/n, bad+se}' \
        >> "$RUN/ab.txt"
    done
  done
done

echo
echo "A = $A_BIN"
echo "B = $B_BIN"
echo "| scenario | A req/s | B req/s | B/A throughput | B added p50 µs | B added p99 µs | A CPU µs/req | B CPU µs/req | errors A/B |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
awk '
  function median(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  { v = $1; s = $2; r = $3; rps[v, s, r] = $4; p50[v, s, r] = $5; p99[v, s, r] = $6; cpu[v, s, r] = $7
    err[v, s] += $8; if (r > nr) nr = r }
  END {
    ns = split("warm cold", sc, " ")
    for (k = 1; k <= ns; k++) {
      s = sc[k]
      for (r = 1; r <= nr; r++) {
        a[r] = rps["A", s, r]; b[r] = rps["B", s, r]; q[r] = rps["B", s, r] / rps["A", s, r]
        c[r] = p50["B", s, r] - p50["A", s, r]; d[r] = p99["B", s, r] - p99["A", s, r]
        e[r] = cpu["A", s, r]; f[r] = cpu["B", s, r]
      }
      printf "| %s | %.0f | %.0f | %.3f | %+.0f | %+.0f | %.1f | %.1f | %d/%d |\n", s, median(a, nr),
        median(b, nr), median(q, nr), median(c, nr), median(d, nr), median(e, nr), median(f, nr),
        err["A", s], err["B", s]
    }
  }' "$RUN/ab.txt"
echo "(per round: $RUN/ab.txt — build scenario round req/s p50 p99 cpu errors)"
