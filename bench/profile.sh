#!/usr/bin/env bash
# A CPU profile of one scenario (not a test): perf record -g on the gateway while wrk loads it.
#   bench/profile.sh warm|cold|nocache [SECONDS] [BINARY]     → bench/run/perf-SCENARIO.txt
# warm: one token (cache hits); cold: 10,000 tokens, cache on; nocache: 10,000 tokens, cache
# off (every request verifies RS256). BENCH_ACCESS_LOG=1 logs to a file.
source "$(dirname "$0")/lib.sh"
SCEN=${1:?usage: bench/profile.sh warm|cold|nocache [SECONDS] [BINARY]}
SECS=${2:-8}
GW=${3:-$BIN}
need wrk nginx perf
build_and_mint
start_upstream
cache=100000; tokens=$RUN/warm.txt
case $SCEN in
  cold) tokens=$RUN/cold.txt ;;
  nocache) tokens=$RUN/cold.txt; cache=0 ;;
esac
port=${BENCH_GATEWAY_PORT:-18230}
[ "${BENCH_ACCESS_LOG:-0}" = 1 ] && BENCH_ACCESS_LOG_PATH="$RUN/profile-access.log"
BENCH_ACCESS_LOG_PATH=${BENCH_ACCESS_LOG_PATH:-off} gateway_config "$RUN/profile.toml" "$port" "$cache"
"$GW" run --config "$RUN/profile.toml" 2>"$RUN/profile-gw.log" & GPID=$!; PIDS+=($GPID)
wait_port "$port"
wrk_result "$port" "$tokens" 2s # warm-up
perf record -F 2000 -g -p "$GPID" -o "$RUN/perf-$SCEN.data" -- sleep "$SECS" >/dev/null 2>&1 &
REC=$!
wrk_result "$port" "$tokens" "$((SECS + 1))s"
wait $REC || true
echo "$SCEN: $((requests * 1000000 / duration_us)) req/s p99 ${p99_us} µs"
perf report -i "$RUN/perf-$SCEN.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -v '^#' | grep '%' | head -60 > "$RUN/perf-$SCEN.txt"
perf report -i "$RUN/perf-$SCEN.data" --no-children --sort dso --stdio 2>/dev/null | grep -v '^#' | grep '%' | head -12 >> "$RUN/perf-$SCEN.txt"
echo "profile: $RUN/perf-$SCEN.txt"
