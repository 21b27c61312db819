#!/usr/bin/env bash
# cc-gateway benchmark (not a test): the upstream hit directly vs through cc-gateway, in one
# run, with wrk on loopback. Scenarios:
#   (a) warm   — one token repeated (verified-token cache hits)
#   (b) cold   — 10,000 distinct tokens round-robin (cache on)
#   (c) nocache — (b) with auth.token_cache_size = 0: raw verification on every request
# Budget rules per store are measured by bench/budgets.sh (interleaved rounds).
# Reports req/s, ratio to direct, p50/p99, the gateway's CPU µs per request (user+sys from
# /proc) and RSS. Absolute numbers on a shared 2-core VM are noisy: compare ratios in one run.
#
# Knobs: BENCH_DURATION (10s), BENCH_CONNS (32), BENCH_THREADS (2 wrk threads),
#        BENCH_RSS_SECONDS (0 = skip; else a long cold run, then the RSS).
source "$(dirname "$0")/lib.sh"
DUR=${BENCH_DURATION:-10s}
GW_PORT=${BENCH_GATEWAY_PORT:-18184}
need wrk nginx
build_and_mint
start_upstream

declare -A RPS
ROWS=()
measure() { # name port tokens-file pid-or-empty
  local name=$1 port=$2 tokens=$3 pid=${4:-}
  wrk_result "$port" "$tokens" 2s # warm-up
  local c0; c0=$(cpu_ticks $pid)
  wrk_result "$port" "$tokens" "$DUR"
  local c1; c1=$(cpu_ticks $pid)
  local rps; rps=$(awk -v r="$requests" -v d="$duration_us" 'BEGIN{printf "%.0f", r/(d/1e6)}')
  RPS[$name]=$rps
  local cpu="-" rss="-"
  if [ -n "$pid" ]; then
    cpu=$(awk -v t=$((c1-c0)) -v hz="$HZ" -v r="$requests" 'BEGIN{printf "%.1f", t/hz*1e6/r}')
    rss=$(rss_mib "$pid")
  fi
  ROWS+=("$name|$rps|$(awk -v a="$p50_us" 'BEGIN{printf "%.2f", a/1000}')|$(awk -v a="$p99_us" 'BEGIN{printf "%.2f", a/1000}')|$non2xx|$sockerr|$cpu|$rss")
}

measure "direct" $UP_PORT "$RUN/warm.txt"

run_gateway() { # cache-size
  gateway_config "$RUN/gw-$1.toml" "$GW_PORT" "$1"
  "$BIN" run --config "$RUN/gw-$1.toml" 2>"$RUN/gw-$1.log" & GW=$!; PIDS+=($GW)
  wait_port $GW_PORT
  IDLE_RSS=$(rss_mib $GW)
}
stop_gateway() { kill "$GW"; wait "$GW" 2>/dev/null || true; }

run_gateway 100000
echo "idle RSS: ${IDLE_RSS} MiB" > "$RUN/rss.txt"
measure "(a) cc-gateway warm" $GW_PORT "$RUN/warm.txt" $GW
measure "(b) cc-gateway cold (10k tokens)" $GW_PORT "$RUN/cold.txt" $GW
if [ "${BENCH_RSS_SECONDS:-0}" -gt 0 ]; then
  # memory under a long cold run (target: RSS after 1M requests over 10,000 tokens)
  wrk_result $GW_PORT "$RUN/cold.txt" "${BENCH_RSS_SECONDS}s"
  echo "RSS after $requests more cold requests: $(rss_mib $GW) MiB" >> "$RUN/rss.txt"
fi
echo "RSS after the runs: $(rss_mib $GW) MiB" >> "$RUN/rss.txt"
stop_gateway
run_gateway 0
measure "(c) cc-gateway cold, cache off" $GW_PORT "$RUN/cold.txt" $GW
stop_gateway

direct=${RPS[direct]}
echo
echo "| system | req/s | vs direct | p50 ms | p99 ms | non-2xx | sock err | gateway CPU µs/req | RSS MiB |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for r in "${ROWS[@]}"; do
  IFS='|' read -r n rps p50 p99 bad serr cpu rss <<<"$r"
  echo "| $n | $rps | $(awk -v a="$rps" -v b="$direct" 'BEGIN{printf "%.0f%%", 100*a/b}') | $p50 | $p99 | $bad | $serr | $cpu | $rss |"
done
cat "$RUN/rss.txt"
